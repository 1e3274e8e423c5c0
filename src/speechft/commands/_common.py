"""Helpers shared by the CLI subcommands: the shared options (model, device, user task), and turning
library errors into clean exits that leave nothing behind."""
from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Iterable, Iterator, Optional

import typer

from ..paths import FBANK_NAME, SHIPPED_NAMES, TINY_NAME, TINY_RANDOM_NAME
from ..utils.device import HELP as DEVICE_HELP
from ..utils.names import UnknownNameError

log = logging.getLogger("speechft")

# Errors that are the user's input, not a bug: print one clear line and exit 2. Unknown names (tasks,
# corpora, recipes, ...) raise UnknownNameError; any other KeyError is a bug and keeps its traceback.
USER_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, UnknownNameError, ValueError, OSError)

DEFAULT_MODEL = TINY_NAME  # the model every verb uses when a model is optional and none is named
# Built-in names from speechft.paths, so that shipping another version needs no help-text edit.
_EARLIER_TINY = ", ".join(n for n in SHIPPED_NAMES if n != TINY_NAME)
MODEL_REFS = (f"{TINY_NAME} (default), {_EARLIER_TINY}, {TINY_RANDOM_NAME}, {FBANK_NAME}, a model folder, "
              "a run folder (its encoder/) or a hub id")
# θ₀ and θ′ options of merge and sweep
PRETRAINED_HELP = f"θ₀: a model folder, {TINY_NAME}, {_EARLIER_TINY}, {TINY_RANDOM_NAME} or a hub id."
FINETUNED_HELP = "θ′: model folders or fine-tuning run folders (their encoder/); repeat, or list several after it."
# What the user-task options mean, in every verb that takes them (finetune, probe, sweep).
TASK_MANIFESTS_HELP = ("Your own task: train.jsonl,dev.jsonl,test.jsonl (manifests with the target field), or one "
                       "Hugging Face dataset folder (save_to_disk, or an audio folder with <split>/metadata.jsonl).")
TASK_COLUMNS_HELP = ("For a Hugging Face dataset folder: FIELD=COLUMN and SPLIT=NAME pairs, comma-separated, e.g. "
                     "text=sentence,speaker=client_id,dev=validation (default: same-named columns; dev = validation).")
TASK_TYPE_HELP = ("Your task's kind: ctc (token sequence; vocabulary from the train manifest), classify or slots "
                  "(default: ctc for --target-field text/phones, else classify).")
TASK_NAME_HELP = "Your task's name (in results, tables and the run's config)."
TARGET_FIELD_HELP = ("Your task's manifest field: text, phones, label, speaker or language (default: text for "
                     "--task-type ctc, label for classify/slots; with neither, the first of those the manifest has).")
TASK_METRIC_HELP = ("Your task's metric: per, cer, wer or accuracy (default: per for phones, cer for other ctc, "
                    "accuracy).")


def device_option():
    """``--device``: the same option, default and help in every verb that runs a model."""
    return typer.Option("auto", "--device", help=DEVICE_HELP)


def _entries(out: Optional[Path]) -> Optional[tuple]:
    """(folder to watch, it existed, names in it) before a command: ``out``, or the outermost of its
    folders that does not exist yet; None when there is nothing to watch."""
    if out is None:
        return None
    out = Path(out)
    if out.is_dir():
        return out, True, {p.name for p in out.iterdir()}
    if out.exists():
        return None
    top = out
    while not top.parent.exists() and top.parent != top:
        top = top.parent
    return top, False, set()


# What a run that got under way leaves to resume from (fine-tuning / pre-training checkpoints, probe
# results, sweep records, reproduce/study job states): a folder holding one is never cleaned up.
RESUMABLE = ("checkpoints", "checkpoint.pt", "results.jsonl", "sweep.jsonl", "stages.jsonl")


def _remove_created(out: Optional[Path], before: Optional[tuple]) -> None:
    """Remove what this invocation added to ``out`` (the folders it made, ``out`` included), unless the
    run got far enough to be resumed (:data:`RESUMABLE`)."""
    if out is None or before is None:
        return
    top, existed, names = before
    out = Path(out)
    if not top.is_dir() or any((out / n).exists() for n in RESUMABLE):
        return
    if not existed:
        shutil.rmtree(top, ignore_errors=True)
        return
    for p in top.iterdir():
        if p.name in names:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


@contextlib.contextmanager
def user_errors(out: Optional[Path] = None, device: Optional[str] = None) -> Iterator[Optional[str]]:
    """User mistakes inside the block print one ``error:`` line and exit 2; an internal error keeps its
    traceback. ``out``: what the block added to that folder is removed when it fails so (a failed command
    leaves nothing behind). ``device``: the ``--device`` value, checked first and published for the block
    (:func:`speechft.utils.device.device_env`); the block gets the resolved device."""
    from ..utils.device import device_env, resolve_device

    before = _entries(out)
    try:
        if device is None:
            yield None
        else:
            with device_env(resolve_device(device)) as dev:
                yield dev
    except USER_ERRORS as e:
        _remove_created(out, before)
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    except typer.Exit as e:
        if e.exit_code == 2:
            _remove_created(out, before)
        raise


def split_csv(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def check_models(refs: Iterable[Optional[str]]) -> None:
    """Every model reference resolves (no loading, no hub access for local-looking paths): a typo or a
    missing folder fails here, before any work."""
    from ..models.io import resolve_ref

    for ref in refs:
        if ref is not None:
            resolve_ref(ref)


def get_task(name: str):
    """A registered task; an unknown name says how to use your own task under that name."""
    from ..tasks import get_task as lookup

    try:
        return lookup(name)
    except UnknownNameError as e:
        raise UnknownNameError(f"{e} (for your own task: --task-manifests train,dev,test --task-name {name})") from None


_FIELD_ORDER = ("text", "phones", "label", "speaker", "language")


def _manifest_fields(path: Path, field: Optional[str]) -> tuple[bool, list]:
    """(some row has ``field``, target fields seen) of a JSONL manifest; stops at the first row with it."""
    import json

    seen: dict = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if not isinstance(row, dict):
                continue
            if field is not None and row.get(field) not in (None, ""):
                return True, []
            seen.update((k, None) for k in _FIELD_ORDER if row.get(k) not in (None, ""))
    return False, [k for k in _FIELD_ORDER if k in seen]


def hf_task_manifests(folder: str, columns: Optional[str]) -> list[str]:
    """The train/dev/test manifests of a Hugging Face dataset folder (converted once, see corpora.hf)."""
    from ..corpora.hf import dataset_manifests, is_hf_dataset, parse_mapping

    if not is_hf_dataset(folder):
        raise ValueError(f"--task-manifests: {folder} is a folder but not a Hugging Face dataset (no dataset_dict.json "
                         f"and no <split>/metadata.jsonl or metadata.csv)")
    cols, splits = parse_mapping(columns, "--task-columns")
    m = dataset_manifests(folder, columns=cols, splits=splits)
    return [str(m[s]) for s in ("train", "dev", "test")]


def user_task_from_options(manifests: Optional[str], task_type: Optional[str], name: str,
                           target_field: Optional[str], metric: Optional[str], columns: Optional[str] = None):
    """The one parser of a user task (``--task-manifests``, ``--task-type``, ``--task-name``,
    ``--target-field``, ``--task-metric``) for finetune, probe and sweep; None without ``--task-manifests``.

    Names are checked first, then that the manifests exist; the type follows the field (text/phones ->
    ctc, else classify) and the field the type; a manifest none of whose rows has the field is one error
    line naming the file, the field and the options that match what it holds."""
    from ..data.manifest import TARGET_FIELDS
    from ..tasks import KINDS, METRICS, user_task

    if not manifests:
        given = [o for o, v in (("--task-type", task_type), ("--target-field", target_field),
                                ("--task-metric", metric), ("--task-columns", columns)) if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)} describe(s) a user task: pass --task-manifests train,dev,test too")
        return None
    if task_type is not None and task_type not in KINDS:
        raise ValueError(f"--task-type must be one of {', '.join(KINDS)}, not {task_type!r}")
    if target_field is not None and target_field not in TARGET_FIELDS:
        raise ValueError(f"--target-field must be one of {', '.join(TARGET_FIELDS)}, not {target_field!r}")
    if metric is not None and metric not in METRICS:
        raise ValueError(f"--task-metric must be one of {', '.join(METRICS)}, not {metric!r}")
    paths = split_csv(manifests)
    missing = next((p for p in paths if not Path(p).exists()), None)
    if missing is not None:
        raise FileNotFoundError(f"--task-manifests: {missing} not found")
    if len(paths) == 1 and Path(paths[0]).is_dir():
        paths = hf_task_manifests(paths[0], columns)
    elif columns is not None:
        raise ValueError("--task-columns applies to a Hugging Face dataset folder given as --task-manifests")
    if len(paths) != 3:
        raise ValueError(f"--task-manifests needs train,dev,test (3 paths) or one dataset folder, got {len(paths)} path(s)")
    not_file = next((p for p in paths if not Path(p).is_file()), None)
    if not_file is not None:
        raise FileNotFoundError(f"--task-manifests: {not_file} is not a file")
    field = target_field
    if field is None and task_type is not None:
        field = "text" if task_type == "ctc" else "label"
    if field is None:
        _, fields = _manifest_fields(Path(paths[0]), None)
        field = fields[0] if fields else "text"
        log.info("user task %s: target field %r (the first the train manifest has; --target-field to choose)",
                 name, field)
    kind = task_type or ("ctc" if field in ("text", "phones") else "classify")
    for p in paths:
        found, fields = _manifest_fields(Path(p), field)
        if not found:
            if fields:
                other = fields[0]
                kind_of_other = "ctc" if other in ("text", "phones") else "classify"
                hint = f"; pass --target-field {other} --task-type {kind_of_other}?"
            else:
                hint = f" (nor any of {', '.join(f for f in _FIELD_ORDER if f != field)})"
            raise ValueError(f"{p} has no {field!r} field{hint}")
    return user_task(name, tuple(paths), kind, field, metric=metric)
