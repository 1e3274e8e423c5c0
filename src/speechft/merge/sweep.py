"""α sweep: merge at each α, probe each merged encoder, record, plot, optionally select and save one α.

    run_sweep("speechft-tiny", ["ft-pr/"], [0, 0.25, 0.5, 1], ["lite-pr", "lite-sid"], "sweep/",
              select="ft-task:lite-pr,max-drop:2%")

Outputs in ``out_dir``:
    sweep.jsonl        one record per (α, task, metric), appended as soon as that α is probed
    sweep_config.json  what the records were produced with (a rerun with other settings is refused)
    sweep.png          metric vs α per task (drawn from the records only)
    probe/             the probe harness's own results.jsonl (its resume state)
    models/alpha-A/    each α's encoder, with models="disk"
    selection.json, selected/   the rule's choice and that α's encoder (HF dir), with ``select``

Inputs are read once: with ``models="memory"`` (default) all of them are loaded and each α's encoder is
built in memory; with ``models="disk"`` all pending α are written in one streaming pass. Pairs
(α, task) already in sweep.jsonl are skipped, so an interrupted sweep resumes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

from .. import __version__
from ..paths import scratch_root
from ..utils.io import (append_jsonl, atomic_write_json, check_not_input, check_writable, read_jsonl, remove_empty_dir,
                        rewrite_jsonl)
from .keys import plan_keys
from .merge import build_card, merge_models, merge_tensor, open_sources, stream_merge
from .methods import MergeParams, check_params, describe, get_method
from .plot import plot_sweep
from .select import parse_rule, select_alpha
from .stream import MemorySource

log = logging.getLogger(__name__)

SWEEP_FILE, CONFIG_FILE, PLOT_FILE = "sweep.jsonl", "sweep_config.json", "sweep.png"
SELECTION_FILE, SELECTED_DIR = "selection.json", "selected"
SCHEMA_VERSION = 1
MODES = ("memory", "disk")


@dataclass(frozen=True)
class SweepResult:
    records: list[dict]
    plot: Optional[Path]
    selection: Optional[dict]
    selected_dir: Optional[Path]


def alpha_label(a: float) -> str:
    return f"{a:g}"


def parse_alphas(values: Sequence) -> list[float]:
    out = []
    for v in values:
        try:
            a = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"--alphas: {v!r} is not a number") from None
        if not math.isfinite(a):
            raise ValueError(f"--alphas: {v!r} is not finite")
        if round(a, 9) in {round(x, 9) for x in out}:
            raise ValueError(f"--alphas: {a:g} is listed twice")
        out.append(a)
    if not out:
        raise ValueError("--alphas: at least one α is needed")
    if any(a < 0 or a > 1 for a in out):
        log.warning("α outside [0, 1] extrapolates beyond the pre-trained/fine-tuned models")
    return out


def sweep_identity(method, params: MergeParams, excluded: str, sources, probe: dict) -> dict:
    """Everything the records depend on apart from α and task (stored in sweep_config.json)."""
    opts = {k: v for k, v in describe(method, params).items() if k != "alpha"}
    from ..utils.provenance import dir_digest

    return {"method": method.name, **opts, "excluded": excluded, "pretrained": str(sources[0].dir.resolve()),
            "finetuned": [str(s.dir.resolve()) for s in sources[1:]], "probe": probe,
            "weights": [dir_digest(s.dir) for s in sources]}  # content: a model rewritten in place is another sweep


def identity_id(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def check_resume(out_dir: Path, identity: dict) -> list[dict]:
    """Records of this sweep already in ``out_dir``; refuses a folder written with other settings."""
    cfg_path = out_dir / CONFIG_FILE
    if cfg_path.exists():
        old = json.loads(cfg_path.read_text())
        diffs = [f"{k}: {old.get(k)!r} -> {identity.get(k)!r}" for k in sorted(set(old) | set(identity))
                 if old.get(k) != identity.get(k)]
        if diffs:
            raise ValueError(f"{out_dir} holds a sweep made with other settings ({'; '.join(diffs)}); "
                             "use another --out")
    elif (out_dir / SWEEP_FILE).exists():
        raise ValueError(f"{out_dir / SWEEP_FILE} exists without {CONFIG_FILE}; use another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg_path, identity)
    sid = identity_id(identity)
    return [r for r in read_jsonl(out_dir / SWEEP_FILE) if r.get("sweep_id") == sid]


def aggregate(probe_records: list[dict], alpha: float, tasks: Sequence[str], base: dict) -> list[dict]:
    """One sweep record per (task, metric): mean over seeds of test and dev values."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in probe_records:
        if r["task"] in tasks:
            groups.setdefault((r["task"], r["metric"]), []).append(r)
    missing = [t for t in tasks if not any(k[0] == t for k in groups)]
    if missing:
        raise RuntimeError(f"α={alpha:g}: the probe returned no result for {', '.join(missing)}")
    out = []
    for (task, metric), rs in groups.items():
        vals = [float(r["value"]) for r in rs]
        devs = [r.get("dev_value") for r in rs]
        out.append({
            **base, "alpha": alpha, "task": task, "metric": metric,
            "value": statistics.fmean(vals),
            "dev_value": statistics.fmean(devs) if all(d is not None for d in devs) else None,
            "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            "higher_is_better": bool(rs[0]["higher_is_better"]),
            "seeds": [r.get("seed") for r in rs], "values": vals,
            "model": rs[0].get("model"), "fingerprint": rs[0].get("fingerprint"),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })
    return out


def sweep_from_records(models: dict, tasks: Sequence[str], probe_records: Sequence[dict], out_dir: str | Path,
                       method: str = "linear", plot: bool = True) -> SweepResult:
    """A sweep made of probes that already ran: ``models`` maps α to the probe-record name of the
    model merged at α (``reproduce`` probes them as models of its own). Writes ``sweep.jsonl``
    (replaced, one record per (α, task, metric), mean over seeds) and ``sweep.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = {"schema_version": SCHEMA_VERSION, "method": get_method(method).name, "package_version": __version__}
    by_alpha = {float(a): [r for r in probe_records if r["model"] == name and r["task"] in tasks]
                for a, name in sorted(models.items())}
    base["sweep_id"] = identity_id({"models": {f"{a:g}": n for a, n in models.items()},
                                    "records": sorted(r.get("key") or "" for rs in by_alpha.values() for r in rs)})
    records = [rec for a, recs in by_alpha.items() for rec in aggregate(recs, a, list(tasks), base)]
    rewrite_jsonl(out_dir / SWEEP_FILE, records)
    png = plot_sweep(records, out_dir / PLOT_FILE, title=f"{base['method']} merge: metric vs α") if plot and records else None
    return SweepResult(records, png, None, None)


def encoder_from_state(model_dir: Path, state: dict, name: str):
    """An HFEncoder of θ₀'s architecture holding ``state`` (canonical names; pre-training/heads ignored)."""
    from transformers import AutoConfig, AutoModel

    from ..models.encoder import HFEncoder

    model = AutoModel.from_config(AutoConfig.from_pretrained(model_dir))
    missing, _unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k != "masked_spec_embed"]  # unused at inference (no masking)
    if missing:
        raise ValueError(f"{model_dir}: the merged weights lack {len(missing)} tensors of the model, e.g. {missing[:3]}")
    enc = HFEncoder(model, name=name)
    pre = model_dir / "preprocessor_config.json"
    enc.normalize_input = bool(json.loads(pre.read_text()).get("do_normalize", False)) if pre.exists() else False
    return enc.eval()


def _memory_encoders(sources, plan, method, params_by_alpha: dict, names: dict):
    """Yield (α, encoder) with every input loaded into memory once."""
    mem = [MemorySource.load(sources[0], list(plan.canonical))]
    mem += [MemorySource.load(s, [m[k] for k in plan.merged]) for s, m in zip(sources[1:], plan.maps[1:])]
    for alpha, params in params_by_alpha.items():
        state = {}
        for stored, key in plan.canonical.items():
            base = mem[0].get(stored)
            if key in plan.merged:
                tuned = [s.get(m[key]) for s, m in zip(mem[1:], plan.maps[1:])]
                state[key] = merge_tensor(method, params, key, base, tuned, base.dtype)
            else:
                state[key] = base
        yield alpha, encoder_from_state(sources[0].dir, state, names[alpha])


def sweep_model_name(method: str, alpha: float) -> str:
    """The probe-record name of the sweep's model at ``alpha``."""
    return f"{get_method(method).name} alpha={alpha_label(alpha)}"


def _setup(pretrained, finetuned, alphas, method, weights, density, seed, majority_sign, excluded):
    """The method, weights, {α: MergeParams} (each checked), opened sources and key plan of a sweep."""
    m = get_method(method)
    w = tuple(float(x) for x in weights) if weights is not None else None
    params = {a: MergeParams(alpha=a, weights=w, density=density, seed=seed, majority_sign=majority_sign)
              for a in alphas}
    for p in params.values():
        check_params(m, p, len(finetuned))
    sources = open_sources(pretrained, list(finetuned))
    return m, w, params, sources, plan_keys(sources, excluded=excluded)


def _disk_models(sources, plan, method, params_by_alpha: dict, out_dir: Path, dtype_name="source"):
    """Write every pending α in one streaming pass; yield (α, model directory)."""
    dirs = {a: out_dir / "models" / f"alpha-{alpha_label(a)}" for a in params_by_alpha}
    todo = {a: p for a, p in params_by_alpha.items() if not (dirs[a] / "model.safetensors").exists()}
    if todo:
        cards = [build_card(dirs[a].name, method, p, sources, plan, dtype_name) for a, p in todo.items()]
        stream_merge(sources, plan, method, list(todo.values()), [dirs[a] for a in todo], cards)
    for a in params_by_alpha:
        yield a, str(dirs[a])


def _task_objects(tasks: Sequence) -> dict:
    """``--tasks`` as name -> what the probe is given (a registered name, or a Task object); unknown names
    fail with "did you mean", a name listed twice or no task at all with a ValueError."""
    from ..tasks import get_task

    task_objs = {}
    for t in tasks:
        name = t if isinstance(t, str) else t.name
        if isinstance(t, str):
            get_task(t)
        if name in task_objs:
            raise ValueError(f"--tasks: {name} is listed twice")
        task_objs[name] = t
    if not task_objs:
        raise ValueError("--tasks: at least one task is needed")
    return task_objs


def _check_select(select: str, tasks: list[str], alphas: list[float]) -> None:
    """Fail before any work when the ``--select`` rule cannot be applied to this sweep."""
    rule, kw = parse_rule(select)
    if "task" in kw and kw["task"] not in tasks:
        raise ValueError(f"--select: task {kw['task']!r} is not among --tasks ({', '.join(tasks)})")
    if rule.name == "ft-task" and 0.0 not in alphas:
        raise ValueError("--select ft-task needs α=0 in --alphas (drops are measured against it)")


def _data_keys(task_objs: dict, size: str, fsdd_root: Optional[str], limit: Optional[int],
               epochs: Optional[int]) -> dict:
    """task name -> the key of the data the built-in probe uses for it (manifest contents, rows, audio)."""
    from ..probe.runner import plan_tasks
    from ..tasks import get_task
    from ..utils.provenance import key_of

    objs = [t if not isinstance(t, str) else get_task(t) for t in task_objs.values()]
    return {p.task.name: key_of(p.data) for p in plan_tasks(objs, size, fsdd_root, limit, False, epochs, {})}


def _current_records(path: Path, sid: str, alphas: Sequence[float], data_keys: dict) -> list[dict]:
    """The newest record per (α, task, metric) of sweep ``sid`` in ``path``, on the tasks' current data."""
    wanted = {round(a, 9) for a in alphas}
    latest = {}
    for r in read_jsonl(path):
        if r.get("sweep_id") == sid and round(r["alpha"], 9) in wanted and r["task"] in data_keys \
                and r.get("data_key") == data_keys[r["task"]]:
            latest[(round(r["alpha"], 9), r["task"], r["metric"])] = r
    return list(latest.values())


def run_sweep(pretrained: str, finetuned: Sequence[str], alphas: Sequence[float], tasks: Sequence,
              out_dir: str | Path, *, method: str = "linear", weights: Optional[Sequence[float]] = None,
              density: float = 0.5, seed: int = 0, majority_sign: str = "total", excluded: str = "keep",
              models: str = "memory", select: Optional[str] = None, size: str = "default",
              seeds: Sequence[int] = (0,), limit: Optional[int] = None, fsdd_root: Optional[str] = None,
              epochs: Optional[int] = None, cache_dir: Optional[str] = None,
              probe_fn: Optional[Callable[..., list]] = None, plot: bool = True,
              probe_dir: Optional[str | Path] = None) -> SweepResult:
    """Sweep α; see the module docstring. ``tasks``: registered names or Task objects (user tasks).

    ``probe_dir`` (default ``out_dir/probe``) holds the probe records; pointing it at another run's
    probe folder lets α whose merged weights equal an already-probed model (α=0 is θ₀ bit for bit)
    reuse that model's records instead of training the heads again (matched by weight fingerprint).

    ``probe_fn`` (default :func:`speechft.probe.run_probe`) is called as
    ``probe_fn(model, tasks, out_dir, seeds=, size=, fsdd_root=, limit=, model_name=, epochs=, cache_dir=, replace=True)``
    with an encoder (models="memory") or a model directory (models="disk") and returns probe records.
    """
    alphas = parse_alphas(alphas)
    task_objs = _task_objects(tasks)
    tasks = list(task_objs)
    if models not in MODES:
        raise ValueError(f"--models must be one of {', '.join(MODES)}, got {models!r}")
    if select:
        _check_select(select, tasks, alphas)
    m, w, params_by_alpha, sources, plan = _setup(pretrained, finetuned, alphas, method, weights, density, seed,
                                                  majority_sign, excluded)
    out_dir = Path(out_dir)
    for d, whole in ((out_dir, False), (out_dir / SELECTED_DIR, True), (out_dir / "models", True)):
        check_not_input(d, {"--pretrained": pretrained, "--finetuned": list(finetuned)}, replaced=whole)
    check_writable(out_dir)
    probe_opts = {"size": size, "seeds": [int(s) for s in seeds], "limit": limit, "epochs": epochs}
    identity = sweep_identity(m, params_by_alpha[alphas[0]], excluded, sources, probe_opts)
    sid = identity_id(identity)
    # each task's data (manifest contents, rows, audio): a record counts only for the data it was made on
    data_keys = (_data_keys(task_objs, size, fsdd_root, limit, epochs) if probe_fn is None
                 else {t: None for t in tasks})  # a custom probe (tests, other harnesses) answers for its own data
    done = {(round(r["alpha"], 9), r["task"]) for r in check_resume(out_dir, identity)
            if r.get("data_key") == data_keys[r["task"]]} if tasks else set()
    pending = {a: [t for t in tasks if (round(a, 9), t) not in done] for a in alphas}
    pending = {a: ts for a, ts in pending.items() if ts}
    log.info("sweep %s: %d α x %d tasks, %d α to probe", sid, len(alphas), len(tasks), len(pending))

    if pending:
        if probe_fn is None:
            from ..probe import run_probe as probe_fn
        names = {a: sweep_model_name(m.name, a) for a in pending}
        probe_dir = Path(probe_dir) if probe_dir is not None else out_dir / "probe"
        todo = {a: params_by_alpha[a] for a in pending}
        produced = (_memory_encoders(sources, plan, m, todo, names) if models == "memory"
                    else _disk_models(sources, plan, m, todo, out_dir))
        base = {"schema_version": SCHEMA_VERSION, "sweep_id": sid, "method": m.name,
                "package_version": __version__, "probe": probe_opts}
        for k, (alpha, model) in enumerate(produced, 1):  # the overall progress line: α k of N
            log.info("α %d/%d (%g): probing %d task(s)", k, len(pending), alpha, len(pending[alpha]))
            # an interpolation (0 < α < 1) exists only in this sweep: unless a cache was named, its features
            # are scratch, under OUT/features, deleted once probed (θ₀ = α 0 and θ′ = α 1 keep the shared cache)
            scratch = scratch_root(out_dir) / f"alpha-{alpha:g}" if cache_dir is None and 0 < alpha < 1 else None
            recs = probe_fn(model, [task_objs[t] for t in pending[alpha]], probe_dir, seeds=tuple(probe_opts["seeds"]), size=size,
                            fsdd_root=fsdd_root, limit=limit, model_name=names[alpha], epochs=epochs,
                            cache_dir=str(scratch) if scratch else cache_dir, replace=True)
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
                remove_empty_dir(scratch.parent)
            for rec in aggregate(recs, alpha, pending[alpha], base):
                append_jsonl(out_dir / SWEEP_FILE, {**rec, "data_key": data_keys[rec["task"]]})
            del model

    records = _current_records(out_dir / SWEEP_FILE, sid, alphas, data_keys)
    selection, selected_dir = None, None
    if select:
        selection = select_alpha(records, select)
        a = selection["alpha"]
        selected_dir = merge_models(
            pretrained, list(finetuned), out_dir / SELECTED_DIR, method=m.name, alpha=a, weights=w, density=density,
            seed=seed, majority_sign=majority_sign, excluded=excluded, overwrite=True,
            card_extra={"selection": {"rule": select, "alpha": a, "basis": selection["basis"],
                                      "tasks": tasks, "sweep": str(out_dir / SWEEP_FILE)}})
        atomic_write_json(out_dir / SELECTION_FILE, selection)
        log.info("selected α=%g by %s; saved %s", a, select, selected_dir)
    png = None
    if plot and records:
        png = plot_sweep(records, out_dir / PLOT_FILE, selected_alpha=selection["alpha"] if selection else None,
                         title=f"{m.name} merge: metric vs α")
    return SweepResult(records, png, selection, selected_dir)
