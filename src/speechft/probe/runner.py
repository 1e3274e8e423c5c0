"""`run_probe`: SUPERB-style probing of one frozen encoder on many tasks, resumable.

For every task: resolve its manifests, read and validate the rows, build the target vocabulary from
the train split, extract (or reuse) cached features of all hidden states for train/dev/test, then for
every seed train a fresh head (learnable softmax-weighted layer sum + the task's downstream model),
select the checkpoint on the dev metric and append the test result to ``out_dir/results.jsonl``.

Every record carries a provenance key (:func:`record_provenance`: the model's weight fingerprint,
the task definition, each manifest's content, the rows used and their audio files, the head
training settings, the seed and the record/package versions). A record with an equal key is not
run again, so an interrupted suite resumes where it stopped; when the same weights were probed
under another name, the record is copied under the new name. Records of the same model name and
task made with other inputs are refused (or replaced with ``replace=True``, the CLI's
``--overwrite``): a results file never holds old and new results of one model side by side.
"""
from __future__ import annotations

import functools
import logging
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np

from .. import __version__
from ..tasks import FSDD_TASKS, LITE_TASKS, Task, get_task
from ..utils.device import default_device
from ..utils.io import append_jsonl, check_writable, jsonl_lock, read_jsonl, rewrite_jsonl
from ..utils.provenance import changes, file_digest, key_of, stat_digest
from . import cache as fcache
from .profiles import DEFAULT_PROFILE, get_profile
from .train import CachedSource, ProbeConfig, train_head, uses_pooled

log = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
SCHEMA_VERSION = 2  # 2: provenance keys (key, group_key, data_key, provenance)
SIZES = ("default", "quick", "study")  # lite/FSDD data sizes (corpora.lite.SIZES); quick also trains fewer epochs


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
    cache_dirs: Optional[Sequence[Optional[Union[str, Path]]]] = None,
) -> None:
    """Fill the feature caches :func:`run_probe` reads, for several models in one pass per split.

    ``models``: references or encoders. Models sharing a CNN (a pre-trained model and its Stable-FT /
    Speech-FT descendants) compute it once per batch, so probing them afterwards skips most of the
    encoder time; the cached features are bit-identical to what :func:`run_probe` would extract.
    ``cache_dirs``: one cache root per model (``None`` entries: ``cache_dir``), e.g. a run's own
    scratch folder for the models it made.
    """
    from ..models.io import load_encoder

    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    roots = list(cache_dirs) if cache_dirs is not None else [None] * len(models)
    if len(roots) != len(models):
        raise ValueError(f"{len(models)} models but {len(roots)} cache folders")
    encoders, seen = [], set()
    for m, root in zip(models, roots):
        e = load_encoder(str(m)) if isinstance(m, (str, Path)) else m
        key, root = fcache.model_key(e), root or cache_dir
        if (key, str(root)) not in seen:  # the same weights twice would write the same cache twice
            seen.add((key, str(root)))
            encoders.append((key, root, e.to(device) if device != "cpu" else e))
            fcache.mark_used(fcache.model_folder(key, root), getattr(e, "name", None))
    for task in _resolve_tasks(tasks):
        manifests = task.resolve_manifests(size=size, fsdd_root=fsdd_root)
        for s, rows in probe_rows(task, manifests, skip_bad, limit).items():
            pooled = uses_pooled(task)
            folders = [fcache.split_folder(task, s, size, key, root, pooled) for key, root, _ in encoders]
            fcache.ensure_features_many([e for _, _, e in encoders], rows, folders, batch_seconds=extract_batch_seconds,
                                        device=device, desc=f"{task.name} {s} features", progress=progress,
                                        pooled_only=pooled)


def split_names(task: Union[str, Task], size: str = "default") -> list[str]:
    """The folder names of a task's train, dev and test features under a model's cache folder
    (tasks on the same audio share them: fsdd-ks and fsdd-sid)."""
    task = _resolve_tasks([task])[0]
    return [fcache.split_name(task, s, size, uses_pooled(task)) for s in ("train", "dev", "test")]


def data_provenance(task: Task, manifests: dict, rows: dict, size: str, limit: Optional[int]) -> dict:
    """Everything about a task's data that determines a probe result: the task's definition, the
    content of each manifest, which rows were used (after ``limit``) and their audio files' (size,
    mtime)."""
    return {
        "task": {"name": task.name, "kind": task.kind, "target_field": task.target_field, "metric": task.metric,
                 "head": task.head, "head_options": task.head_options(), "version": task.version},
        "size": size,
        "limit": limit,
        "splits": {s: {"manifest": file_digest(manifests[s]), "rows": len(rs),
                       "ids": key_of([r.id for r in rs]), "audio": stat_digest(r.audio for r in rs)}
                   for s, rs in rows.items()},
    }


def record_provenance(plan: "TaskPlan", fingerprint: str, encoder_version: str, seed: int) -> dict:
    """The provenance of one probe record: data, model weights, head and training settings (and the
    profile they come from), seed, versions."""
    return {"data": plan.data, "model": {"fingerprint": fingerprint, "encoder_version": encoder_version},
            "train": {**plan.cfg.to_dict(), "optimizer": "adam", "profile": plan.profile, "head": plan.task.head,
                      "head_options": plan.head_options},
            "seed": int(seed),
            "versions": {"record": SCHEMA_VERSION, "package": __version__}}


def record_keys(prov: dict) -> dict:
    """``key`` (everything), ``group_key`` (everything but the seed: records a table may average)
    and ``data_key`` (the data alone: which FBANK records score a model's)."""
    return {"key": key_of(prov), "group_key": key_of({**prov, "seed": None}), "data_key": key_of(prov["data"])}


@dataclass
class TaskPlan:
    """One task of a probe run, resolved and validated before any training."""

    task: Task
    manifests: dict  # split -> manifest path
    rows: dict  # split -> validated, subsampled rows
    cfg: ProbeConfig
    data: dict  # data_provenance(...)
    head_options: dict = field(default_factory=dict)  # build_head options (the profile's, else the task's)
    profile: str = DEFAULT_PROFILE


def plan_tasks(task_list: Sequence[Task], size: str, fsdd_root: Optional[str], limit: Optional[int],
               skip_bad: bool, epochs: Optional[int], options: dict, profile: str = DEFAULT_PROFILE) -> list[TaskPlan]:
    """Check training options and the profile's coverage, then read every task's data: a bad file
    or option fails in seconds, not after other tasks have trained."""
    prof = get_profile(profile)
    settings = {t.name: prof.settings(t, quick=size == "quick", epochs=epochs, **options) for t in task_list}
    plans = []
    for t in task_list:
        manifests = t.resolve_manifests(size=size, fsdd_root=fsdd_root)
        rows = probe_rows(t, manifests, skip_bad, limit)
        for s, rs in rows.items():
            if not rs:
                raise ValueError(f"task {t.name}: the {s} manifest {manifests[s]} has no usable rows")
        cfg, head_options = settings[t.name]
        plans.append(TaskPlan(t, manifests, rows, cfg, data_provenance(t, manifests, rows, size, limit),
                              head_options, prof.name))
    return plans


def _open_model(model, model_name: Optional[str], device: str):
    """(encoder in eval mode on ``device``, record name) of a model reference or encoder."""
    from ..models.io import load_encoder

    if isinstance(model, (str, Path)):
        encoder, name = load_encoder(str(model)), model_name or str(model)
    else:
        encoder = model
        name = model_name or getattr(encoder, "name", "") or type(encoder).__name__
    encoder.eval()
    if device != "cpu":
        encoder.to(device)
    return encoder, name


def _stale(existing: Sequence[dict], name: str, task: str, group_key: str) -> list[dict]:
    """Records of ``name`` on ``task`` made with other inputs than ``group_key`` (legacy records
    without a key count as other inputs)."""
    return [r for r in existing if r.get("model") == name and r.get("task") == task and r.get("group_key") != group_key]


def _stale_message(results_path: Path, name: str, task: str, old: dict, new: dict) -> str:
    what = "; ".join(changes(old.get("provenance") or {}, new)) if old.get("provenance") else \
        "the record has no provenance key (written by an older speechft)"
    return (f"{results_path}: {name} / {task} was probed with other inputs ({what}); "
            "pass --overwrite to replace those results, or use another --out")


def check_stale(results_path: Path, existing: list[dict], name: str, plans: Sequence[TaskPlan], fingerprint: str,
                enc_version: str, replace: bool) -> list[dict]:
    """Refuse (or, with ``replace``, drop from ``results_path``) records of ``name`` whose inputs
    differ from this run's, so a table never shows old and new results of one model side by side.
    Returns the records that remain."""
    stale = []
    for p in plans:
        prov = record_provenance(p, fingerprint, enc_version, 0)
        old = _stale(existing, name, p.task.name, record_keys(prov)["group_key"])
        if old and not replace:
            raise ValueError(_stale_message(results_path, name, p.task.name, old[-1], {**prov, "seed": old[-1].get("seed")}))
        stale += old
    if not stale:
        return existing
    drop = {id(r) for r in stale}
    keep = [r for r in existing if id(r) not in drop]
    rewrite_jsonl(results_path, keep)
    log.info("%s: replaced %d record(s) of %s made with other inputs", results_path, len(stale), name)
    return keep


def _extract_sources(encoder, mkey: str, plan: TaskPlan, size: str, cache_dir, extract_bs: float, device: str,
                     progress: bool) -> dict:
    """Cached features of every split (extracted when missing), as CachedSources. A task whose head
    reads pooled vectors only (:func:`uses_pooled`) gets a pooled-only cache: no frames on disk."""
    sources = {}
    pooled = uses_pooled(plan.task)
    fcache.mark_used(fcache.model_folder(mkey, cache_dir), getattr(encoder, "name", None))
    for s, rs in plan.rows.items():
        folder = fcache.split_folder(plan.task, s, size, mkey, cache_dir, pooled)
        c = fcache.ensure_features(encoder, rs, folder, batch_seconds=extract_bs, device=device,
                                   desc=f"{plan.task.name} {s} features", progress=progress, pooled_only=pooled)
        sources[s] = CachedSource(c, [r.id for r in rs])
    return sources


def _train_one(encoder, plan: TaskPlan, vocab, sources, targets, refs, seed: int, progress: bool, device: str) -> dict:
    """One head trained with ``seed``: train_head's result plus the CPU seconds it took."""
    import torch

    from ..models.heads import build_head

    torch.manual_seed(seed)
    c1 = time.process_time()
    head = build_head(plan.task, encoder.hidden_size, encoder.num_layers + 1, vocab, layer_sum=True, **plan.head_options)
    res = train_head(head, plan.task, vocab, sources, targets, refs, plan.cfg, seed, encoder.frame_rate,
                     progress=progress, desc=f"{plan.task.name} seed {seed}", device=device)
    return {**res, "train_cpu_seconds": round(time.process_time() - c1, 3)}


def _record(name: str, encoder, fingerprint: str, plan: TaskPlan, seed: int, res: dict, prov: dict, size: str,
            limit: Optional[int], timing: dict) -> dict:
    task = plan.task
    return {
        "schema_version": SCHEMA_VERSION,
        **record_keys(prov),
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
        "best_step": res["best_step"],
        "epochs_run": res["epochs_run"],
        "steps_run": res["steps_run"],
        "profile": plan.profile,
        "layer_weights": res["layer_weights"],
        "num_states": encoder.num_layers + 1,
        "size": size,
        "limit": limit,
        "num_utterances": {s: len(rs) for s, rs in plan.rows.items()},
        "config": {**plan.cfg.to_dict(), "head": task.head, "head_options": plan.head_options,
                   "pooled_features": res["pooled_features"], "optimizer": "adam"},
        "history": res["history"],
        "test_items": res.get("test_items"),
        "extract_seconds": timing["extract_seconds"],
        "train_seconds": res["train_seconds"],
        # CPU seconds of this process: comparable across runs on a shared, busy machine
        "extract_cpu_seconds": timing["extract_cpu_seconds"],
        "train_cpu_seconds": res["train_cpu_seconds"],
        "encoder_version": fcache.encoder_version(encoder),
        "package_version": __version__,
        "git_hash": git_hash(),
        "provenance": prov,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def _append(results_path: Path, rec: dict) -> None:
    with jsonl_lock(results_path):
        append_jsonl(results_path, rec)


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
    replace: bool = False,
    profile: str = DEFAULT_PROFILE,
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
        profile: the probe profile (:mod:`speechft.probe.profiles`): ``fast`` (default) or ``superb``.
        replace: records of ``model_name`` on a task made with other inputs (data, weights, settings)
            are removed and recomputed; without it they are an error (``ValueError`` naming what changed).
        options: ``device`` ("cpu"), ``skip_bad`` (drop invalid rows instead of failing),
            ``progress`` (tqdm bars), ``extract_batch_seconds``, and head-training overrides
            ``lr``, ``batch_seconds``, ``batch_size``, ``grad_clip``, ``max_steps``, ``grad_accum``,
            ``eval_every``.

    Returns:
        The records of this model for the requested tasks and seeds, those already present
        (reused: equal provenance key) and the new ones, in task then seed order.
    """
    from ..vocab import Vocab

    device = options.pop("device", None) or default_device("cpu")  # the command's --device, else the CPU
    skip_bad = bool(options.pop("skip_bad", False))
    progress = bool(options.pop("progress", True))
    extract_bs = float(options.pop("extract_batch_seconds", fcache.EXTRACT_BATCH_SECONDS))
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, not {size!r}")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("at least one seed is needed")
    plans = plan_tasks(_resolve_tasks(tasks), size, fsdd_root, limit, skip_bad, epochs, options, profile)
    out_dir = Path(out_dir)
    check_writable(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / RESULTS_FILE

    encoder, name = _open_model(model, model_name, device)
    fingerprint, mkey, enc_version = encoder.fingerprint(), fcache.model_key(encoder), fcache.encoder_version(encoder)
    with jsonl_lock(results_path):  # other processes may append to the same file meanwhile
        existing = check_stale(results_path, read_jsonl(results_path), name, plans, fingerprint, enc_version, replace)
    out: list[dict] = []
    for plan in plans:
        task = plan.task
        by_key: dict = {}
        for r in existing:
            by_key.setdefault(r.get("key"), []).append(r)
        todo = []
        for seed in seeds:
            same = by_key.get(record_keys(record_provenance(plan, fingerprint, enc_version, seed))["key"], [])
            mine = [r for r in same if r.get("model") == name]
            if mine:
                log.info("%s / %s / seed %d: already in %s (same inputs), skipped", name, task.name, seed, results_path)
                out.append(mine[-1])
            elif same:  # same weights, data and settings probed under another name: reuse, do not retrain
                rec = {**same[-1], "model": name, "reused_from": same[-1].get("model")}
                _append(results_path, rec)
                existing.append(rec)
                out.append(rec)
            else:
                todo.append(seed)
        if not todo:
            continue

        t0, c0 = time.perf_counter(), time.process_time()
        vocab = Vocab.build(task, plan.rows["train"])
        targets = {s: encode_targets(task, vocab, rs, s) for s, rs in plan.rows.items()}
        refs = {s: [vocab.reference(task, r) for r in rs] for s, rs in plan.rows.items()} if task.kind == "ctc" else {}
        sources = _extract_sources(encoder, mkey, plan, size, cache_dir, extract_bs, device, progress)
        timing = {"extract_seconds": round(time.perf_counter() - t0, 3),
                  "extract_cpu_seconds": round(time.process_time() - c0, 3)}
        for seed in todo:
            res = _train_one(encoder, plan, vocab, sources, targets, refs, seed, progress, device)
            prov = record_provenance(plan, fingerprint, enc_version, seed)
            rec = _record(name, encoder, fingerprint, plan, seed, res, prov, size, limit, timing)
            _append(results_path, rec)
            existing.append(rec)
            out.append(rec)
            log.info("%s / %s / seed %d: %s = %.4f (dev %.4f, epoch %d)", name, task.name, seed, task.metric,
                     rec["value"], rec["dev_value"], rec["best_epoch"])
    order = {p.task.name: i for i, p in enumerate(plans)}
    return sorted(out, key=lambda r: (order[r["task"]], r["seed"]))
