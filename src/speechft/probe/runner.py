"""`run_probe`: SUPERB-style probing of one frozen encoder on many tasks, resumable.

For every task: resolve its manifests, read and validate the rows, build the target vocabulary from
the train split, extract (or reuse) cached features of all hidden states for train/dev/test, then for
every seed train a fresh head (learnable softmax-weighted layer sum + the task's downstream model),
select the checkpoint on the dev metric and append the test result to ``out_dir/results.jsonl``.

A (model fingerprint, task, task version, seed, size, limit, epochs) combination already in the
results file is not run again, so an interrupted suite resumes where it stopped. When the same
weights were probed under another name, the record is copied under the new name.
"""
from __future__ import annotations

import functools
import logging
import subprocess
import time
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from .. import __version__
from ..tasks import FSDD_TASKS, LITE_TASKS, Task, get_task
from ..utils.io import append_jsonl, check_writable, read_jsonl
from . import cache as fcache
from .train import CachedSource, default_config, train_head

log = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
SCHEMA_VERSION = 1
SIZES = ("default", "quick")


@functools.lru_cache(maxsize=1)
def git_hash() -> Optional[str]:
    """Commit of the source checkout the package runs from (None outside a git checkout)."""
    here = Path(__file__).resolve().parent
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=here, capture_output=True, text=True, timeout=5)
        # Only our own checkout counts (not an unrelated repository the package happens to sit in).
        if top.returncode != 0 or not (Path(top.stdout.strip()) / "src" / "speechft").is_dir():
            return None
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def default_tasks(fsdd_root: Optional[str] = None) -> list[str]:
    """The built-in suite: every lite task, plus the FSDD tasks when a copy of FSDD is found."""
    from ..paths import default_fsdd_root

    if fsdd_root or default_fsdd_root() is not None:
        return list(LITE_TASKS) + list(FSDD_TASKS)
    log.warning("no FSDD copy found (pass --fsdd PATH or set SPEECHFT_FSDD): probing lite tasks only")
    return list(LITE_TASKS)


def _resolve_tasks(tasks: Union[str, Task, Iterable]) -> list[Task]:
    if isinstance(tasks, (str, Task)):
        tasks = [tasks]
    out = [t if isinstance(t, Task) else get_task(str(t)) for t in tasks]
    if not out:
        raise ValueError("no tasks to probe")
    names = [t.name for t in out]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"task(s) listed twice: {', '.join(sorted(dup))}")
    return out


def load_rows(manifest: Path, task: Task, skip_bad: bool = False) -> list:
    """Validated rows of one manifest (every bad row listed in one error unless ``skip_bad``)."""
    try:
        from ..data.validate import load_checked_rows
    except ImportError:  # validation module not available: plain parsing, which still names file and line
        from ..data.manifest import read_manifest

        return read_manifest(manifest)
    return load_checked_rows(manifest, task=task, skip_bad=skip_bad)


def probe_rows(task: Task, manifests: dict, skip_bad: bool = False, limit: Optional[int] = None) -> dict[str, list]:
    """The train/dev/test rows a probe uses: validated (:func:`load_rows`), then :func:`subsample`-d.
    Feature extraction ahead of a probe must select exactly these rows to fill the cache it reads."""
    return {s: subsample(load_rows(manifests[s], task, skip_bad), limit) for s in ("train", "dev", "test")}


def subsample(rows: list, limit: Optional[int]) -> list:
    """At most ``limit`` rows, evenly spread over the manifest (manifests are often sorted by class)."""
    if not limit or len(rows) <= limit:
        return rows
    idx = np.unique(np.linspace(0, len(rows) - 1, int(limit)).round().astype(int))
    return [rows[i] for i in idx]


def encode_targets(task: Task, vocab, rows: list, split: str) -> list:
    """Encoded targets; a dev/test class never seen in training becomes -1 (always counted wrong)."""
    out, unseen = [], 0
    for r in rows:
        try:
            out.append(vocab.encode(task, r))
        except ValueError:
            if split == "train":
                raise
            unseen += 1
            out.append([-1] * len(vocab.symbols) if task.kind == "slots" else -1)
    if unseen:
        log.warning("task %s: %d %s utterances have a label never seen in training (counted as errors)",
                    task.name, unseen, split)
    return out


def _is_fbank(encoder) -> bool:
    return type(encoder).__name__ == "FbankEncoder"


def extract_features(
    models: Sequence,
    tasks,
    size: str = "default",
    fsdd_root: Optional[str] = None,
    limit: Optional[int] = None,
    cache_dir: Optional[Union[str, Path]] = None,
    device: str = "cpu",
    skip_bad: bool = False,
    progress: bool = True,
    extract_batch_seconds: float = fcache.EXTRACT_BATCH_SECONDS,
) -> None:
    """Fill the feature caches :func:`run_probe` reads, for several models in one pass per split.

    ``models``: references or encoders. Models sharing a CNN (a pre-trained model and its Stable-FT /
    Speech-FT descendants) compute it once per batch, so probing them afterwards skips most of the
    encoder time; the cached features are bit-identical to what :func:`run_probe` would extract.
    """
    from ..models.io import load_encoder

    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    encoders, seen = [], set()
    for m in models:
        e = load_encoder(str(m)) if isinstance(m, (str, Path)) else m
        key = fcache.model_key(e)
        if key not in seen:  # the same weights twice would write the same cache twice
            seen.add(key)
            encoders.append((key, e.to(device) if device != "cpu" else e))
    for task in _resolve_tasks(tasks):
        manifests = task.resolve_manifests(size=size, fsdd_root=fsdd_root)
        for s, rows in probe_rows(task, manifests, skip_bad, limit).items():
            folders = [fcache.split_folder(task, s, size, key, cache_dir) for key, _ in encoders]
            fcache.ensure_features_many([e for _, e in encoders], rows, folders, batch_seconds=extract_batch_seconds,
                                        device=device, desc=f"{task.name} {s} features", progress=progress)


def run_probe(
    model,
    tasks,
    out_dir: Union[str, Path],
    seeds: Sequence[int] = (0,),
    size: str = "default",
    fsdd_root: Optional[str] = None,
    limit: Optional[int] = None,
    model_name: Optional[str] = None,
    epochs: Optional[int] = None,
    cache_dir: Optional[Union[str, Path]] = None,
    **options,
) -> list[dict]:
    """Probe ``model`` on ``tasks``; append one record per (task, seed) to ``out_dir/results.jsonl``.

    Args:
        model: a model reference (see :func:`speechft.models.io.load_encoder`) or a SpeechEncoder.
        tasks: task names or :class:`~speechft.tasks.Task` objects (user tasks included).
        seeds: one head is trained per seed; each gives one record.
        size: ``"default"`` or ``"quick"`` lite data; ``quick`` also trains fewer epochs.
        limit: at most this many utterances per split (evenly spread; smoke tests).
        model_name: name in the records (default: the reference, or the encoder's ``name``).
        epochs: override every task's default number of epochs.
        cache_dir: root of the feature cache (default ``data_home()/features``).
        options: ``device`` ("cpu"), ``skip_bad`` (drop invalid rows instead of failing),
            ``progress`` (tqdm bars), ``extract_batch_seconds``, and head-training overrides
            ``lr``, ``batch_seconds``, ``batch_size``, ``grad_clip``.

    Returns:
        The records of this model for the requested tasks and seeds, those already present
        (resumed) and the new ones, in task then seed order.
    """
    from ..models.io import load_encoder
    from ..vocab import Vocab

    device = options.pop("device", "cpu") or "cpu"
    skip_bad = bool(options.pop("skip_bad", False))
    progress = bool(options.pop("progress", True))
    extract_bs = float(options.pop("extract_batch_seconds", fcache.EXTRACT_BATCH_SECONDS))
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("at least one seed is needed")
    task_list = _resolve_tasks(tasks)
    for t in task_list:  # fail on bad training options before any long work
        default_config(t, quick=size == "quick", epochs=epochs, **options)
    # Validate every task's data before training any: a bad file fails in seconds, not after other tasks.
    task_manifests, task_rows = {}, {}
    for t in task_list:
        manifests = task_manifests[t.name] = t.resolve_manifests(size=size, fsdd_root=fsdd_root)
        task_rows[t.name] = probe_rows(t, manifests, skip_bad, limit)
    out_dir = Path(out_dir)
    check_writable(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / RESULTS_FILE

    if isinstance(model, (str, Path)):
        ref = str(model)
        encoder = load_encoder(ref)
        name = model_name or ref
    else:
        encoder = model
        name = model_name or getattr(encoder, "name", "") or type(encoder).__name__
    encoder.eval()
    if device != "cpu":
        encoder.to(device)
    fingerprint = encoder.fingerprint()
    mkey = fcache.model_key(encoder)

    def run_key(r: dict) -> tuple:
        return (r.get("fingerprint"), r.get("task"), r.get("task_version"), r.get("seed"), r.get("size"),
                r.get("limit"), (r.get("config") or {}).get("epochs"))

    existing = read_jsonl(results_path)
    out: list[dict] = []
    for task in task_list:
        cfg = default_config(task, quick=size == "quick", epochs=epochs, **options)
        keyed = {}
        for r in existing:
            keyed.setdefault(run_key(r), []).append(r)
        todo = []
        for seed in seeds:
            key = (fingerprint, task.name, task.version, seed, size, limit, cfg.epochs)
            same = keyed.get(key, [])
            mine = [r for r in same if r.get("model") == name]
            if mine:
                log.info("%s / %s / seed %d: already in %s, skipped", name, task.name, seed, results_path)
                out.append(mine[-1])
            elif same:  # same weights probed under another name: reuse, do not retrain
                rec = {**same[-1], "model": name, "reused_from": same[-1].get("model")}
                append_jsonl(results_path, rec)
                existing.append(rec)
                out.append(rec)
            else:
                todo.append(seed)
        if not todo:
            continue

        t0, c0 = time.perf_counter(), time.process_time()
        manifests = task_manifests[task.name]
        rows = task_rows[task.name]
        for s, rs in rows.items():
            if not rs:
                raise ValueError(f"task {task.name}: the {s} manifest {manifests[s]} has no usable rows")
        vocab = Vocab.build(task, rows["train"])
        targets = {s: encode_targets(task, vocab, rs, s) for s, rs in rows.items()}
        refs = {s: [vocab.reference(task, r) for r in rs] for s, rs in rows.items()} if task.kind == "ctc" else {}
        sources = {}
        for s, rs in rows.items():
            folder = fcache.split_folder(task, s, size, mkey, cache_dir)
            c = fcache.ensure_features(encoder, rs, folder, batch_seconds=extract_bs, device=device,
                                       desc=f"{task.name} {s} features", progress=progress)
            sources[s] = CachedSource(c, [r.id for r in rs])
        extract_s, extract_cpu = time.perf_counter() - t0, time.process_time() - c0

        from ..models.heads import build_head

        num_states = encoder.num_layers + 1
        for seed in todo:
            import torch

            torch.manual_seed(seed)
            c1 = time.process_time()
            head = build_head(task, encoder.hidden_size, num_states, vocab, layer_sum=True)
            res = train_head(head, task, vocab, sources, targets, refs, cfg, seed, encoder.frame_rate,
                             progress=progress, desc=f"{task.name} seed {seed}", device=device)
            rec = {
                "schema_version": SCHEMA_VERSION,
                "model": name,
                "fingerprint": fingerprint,
                "is_fbank": _is_fbank(encoder),
                "task": task.name,
                "task_version": task.version,
                "metric": task.metric,
                "value": res["value"],
                "dev_value": res["dev_value"],
                "higher_is_better": task.higher_is_better,
                "seed": seed,
                "best_epoch": res["best_epoch"],
                "epochs_run": res["epochs_run"],
                "layer_weights": res["layer_weights"],
                "num_states": num_states,
                "size": size,
                "limit": limit,
                "num_utterances": {s: len(rs) for s, rs in rows.items()},
                "config": {**cfg.to_dict(), "head": task.head, "head_options": task.head_options(),
                           "pooled_features": res["pooled_features"], "optimizer": "adam"},
                "history": res["history"],
                "extract_seconds": round(extract_s, 3),
                "train_seconds": res["train_seconds"],
                # CPU seconds of this process: comparable across runs on a shared, busy machine
                "extract_cpu_seconds": round(extract_cpu, 3),
                "train_cpu_seconds": round(time.process_time() - c1, 3),
                "encoder_version": fcache.encoder_version(encoder),
                "package_version": __version__,
                "git_hash": git_hash(),
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            }
            append_jsonl(results_path, rec)
            existing.append(rec)
            out.append(rec)
            log.info("%s / %s / seed %d: %s = %.4f (dev %.4f, epoch %d)", name, task.name, seed, task.metric,
                     rec["value"], rec["dev_value"], rec["best_epoch"])
    order = {t.name: i for i, t in enumerate(task_list)}
    return sorted(out, key=lambda r: (order[r["task"]], r["seed"]))
