"""`speechft reproduce`: the paper's loop from one config.

prepare data → stable fine-tuning on the fine-tuning task → regular fine-tuning (+ baselines) →
merge (α) → the sweep's merged models → probe every model on every task (FBANK as the score's lower
reference) → α sweep (from the probe records) → analyses → ``OUT/report.md``.

The loop is a graph of jobs (:func:`plan_jobs`) run by :func:`speechft.utils.jobs.run_jobs`, on
several worker processes when the machine has the cores: the fine-tunings run side by side, then the
probes, one job per (model, task). θ₀, Stable-FT, Speech-FT and the sweep's interpolations share θ₀'s
frozen CNN, so one job per task extracts all their features in one pass (the CNN runs once).

Every job is keyed by what produced it (its settings, θ₀'s weight fingerprint, and the results of
the jobs it consumes: the content digests of the manifests and models they wrote): a rerun skips a
job only when its key is unchanged, and a changed config key reruns exactly the jobs downstream of
it (a fine-tuning whose settings changed starts from nothing, never from the old checkpoint). The
probe records themselves carry provenance keys (:mod:`speechft.probe.runner`), so a probe job that
reruns retrains only the heads whose inputs changed. The report is written from typed rows
(:class:`Row`) and the records of the current jobs only.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .paths import scratch_root
from .pipeline_config import ReproduceConfig
from .utils.io import atomic_write_text, check_writable, file_name, read_jsonl, remove_empty_dir, rewrite_jsonl
from .utils.jobs import Job, Stages, default_workers, run_jobs

log = logging.getLogger(__name__)

PRETRAINED, REGULAR, STABLE, SPEECHFT, FBANK = "pre-trained", "regular FT", "Stable-FT", "Speech-FT", "FBANK"
BASELINE_NAMES = {"l2sp": "L2-SP", "lora": "LoRA", "dora": "DoRA"}
# Row roles: what a row of the report is (the report never infers it from the name)
ROLE_FBANK, ROLE_PRETRAINED, ROLE_REGULAR, ROLE_BASELINE = "fbank", "pre-trained", "regular", "baseline"
ROLE_STABLE, ROLE_SPEECHFT, ROLE_SWEEP, ROLE_EARLY = "stable", "speech-ft", "sweep", "early"


@dataclass(frozen=True)
class Layout:
    """Where one run keeps everything (``out`` = ``--out``)."""

    out: Path

    def finetune(self, recipe: str) -> Path:
        return self.out / "finetune" / recipe

    def encoder(self, recipe: str) -> Path:
        return self.finetune(recipe) / "encoder"

    def early(self, step: int) -> Path:
        return self.finetune("stable") / "early" / f"step-{step}"

    @property
    def speechft(self) -> Path:
        return self.out / "models" / "speech-ft"

    def sweep_model(self, alpha: float) -> Path:
        return self.out / "models" / "sweep" / f"alpha-{alpha:g}"

    @property
    def probe(self) -> Path:
        return self.out / "probe"

    @property
    def results(self) -> Path:
        return self.probe / "results.jsonl"

    @property
    def sweep(self) -> Path:
        return self.out / "sweep"

    @property
    def analysis(self) -> Path:
        return self.out / "analysis"

    @property
    def report(self) -> Path:
        return self.out / "report.md"


@dataclass(frozen=True)
class Row:
    """One model of the run: its name in the records and tables, its reference, what it is."""

    name: str
    ref: str
    role: str
    alpha: Optional[float] = None  # Speech-FT and sweep rows: the interpolation weight
    in_table: bool = True  # sweep-only models appear in the sweep plot, not the main table


def available_tasks(names, fsdd: Optional[str]) -> tuple[list[str], list[str]]:
    """Tasks to run, and tasks dropped (FSDD tasks when no FSDD copy can be found)."""
    from .paths import default_fsdd_root
    from .tasks import get_task

    keep, dropped = [], []
    fsdd = fsdd or default_fsdd_root()
    for name in dict.fromkeys(names):
        t = get_task(name)
        if t.corpus == "fsdd" and fsdd is None:
            dropped.append(name)
        else:
            keep.append(name)
    return keep, dropped


# Rough single-thread seconds of each job on the default-size demo: only used to start the jobs on
# the longest remaining chain first.
_COST = {"prepare": 15, "finetune-stable": 100, "finetune": 170, "merge": 1, "extract": 45, "probe": 8,
         "probe lite-asr": 40, "probe lite-pr": 18, "sweep": 2, "analyze": 90}


def _device() -> str:
    """Probes and feature extraction run on the command's --device, by default the GPU when there is one
    (fine-tuning picks it itself, following the same --device)."""
    from .utils.device import default_device

    return default_device()


# -- job functions: module-level (pickled to reach a worker), plain JSON-able kwargs, each returns the
# -- content digest of what it wrote (downstream keys include it) or None ------------------------------
def _prepare(tasks: list, size: str, fsdd: Optional[str]) -> str:
    from .tasks import get_task
    from .utils.provenance import file_digest, key_of

    return key_of({name: {s: file_digest(p) for s, p in get_task(name).resolve_manifests(size=size, fsdd_root=fsdd).items()}
                   for name in tasks})


def _finetune(model: str, task: str, recipe: str, rdir: str, size: str, fsdd: Optional[str], options: dict) -> str:
    from .finetune import finetune
    from .utils.provenance import dir_digest

    rdir = Path(rdir)
    finetune(model, task, rdir, recipe=recipe, resume=(rdir / "checkpoints").exists(), size=size, fsdd_root=fsdd,
             **options)
    return dir_digest(rdir / "encoder")


def _merge(model: str, finetuned: list, alphas: list, outs: list, method: str = "linear",
           options: Optional[dict] = None) -> str:
    """θ₀ + α·τ (or ``method`` over several task vectors) for every α in one streaming pass; the
    digest of all the merged models."""
    from .merge.merge import merge_alphas
    from .utils.provenance import dir_digest, key_of

    merge_alphas(model, finetuned, alphas, outs, method=method, overwrite=True, progress=False, **(options or {}))
    return key_of([dir_digest(o) for o in outs])


def _merge_auto(model: str, run_dir: str, spec: str, out: str) -> dict:
    """Speech-FT at the α that rule ``spec`` (``auto[:RULE[:VALUE]]``) picks for the fine-tuning run
    ``run_dir``; the choice goes into the merged model's card. Returns the choice and the model's digest."""
    from .merge.auto import choose_alpha
    from .merge.merge import merge_models
    from .utils.provenance import dir_digest

    choice = choose_alpha(model, run_dir, spec, device=_device())
    merge_models(model, [str(Path(run_dir) / "encoder")], out, alpha=choice.alpha, overwrite=True, progress=False,
                 card_extra={"alpha_auto": choice.to_json()}, layer_alphas=choice.layer_alphas)
    return {**choice.to_json(), "seconds": round(choice.seconds, 2),
            "digest": dir_digest(out)}


def _extract(refs: list, task: str, size: str, fsdd: Optional[str], limit: Optional[int],
             cache_dirs: Optional[list] = None) -> str:
    """Features of every model sharing θ₀'s CNN on one task, in one pass (the CNN runs once). Its
    result is a constant: the feature cache is keyed by content, so what the probes compute does not
    depend on this job (they depend on the jobs that made their models). ``cache_dirs``: per model, the
    cache root (None: the shared cache), unkeyed (:func:`scratch_features`)."""
    from .probe import extract_features

    extract_features(refs, [task], size=size, fsdd_root=fsdd, limit=limit, device=_device(), cache_dirs=cache_dirs)
    return "feature cache"


def _probe(name: str, ref: str, task: str, probe_dir: str, seeds: int, size: str, fsdd: Optional[str],
           limit: Optional[int], epochs: Optional[int], cache_dir: Optional[str] = None) -> list:
    """Probe one model on one task; the result is the sorted provenance keys of its records (the
    report shows exactly these). Records of this model and task made with other inputs are replaced
    (the job owns them). ``cache_dir``: the feature cache root (None: the shared cache), unkeyed."""
    from .probe import run_probe

    recs = run_probe(ref, [task], probe_dir, seeds=tuple(range(seeds)), size=size, fsdd_root=fsdd, limit=limit,
                     model_name=name, epochs=epochs, device=_device(), replace=True, cache_dir=cache_dir)
    return sorted(r["key"] for r in recs)


def _drop_features(root: str, names: list) -> None:
    """Remove the split folders ``names`` of a run-made model's scratch feature cache ``root``."""
    from .probe.cache import drop_splits

    freed = drop_splits(root, names)
    if freed:
        log.debug("dropped %.1f MiB of features under %s", freed / 2**20, root)


def _sweep(models: dict, tasks: list, results: str, out: str) -> None:
    """The α sweep's records and plot, from the probe records of the models at each α."""
    from .merge.sweep import sweep_from_records

    sweep_from_records({float(a): name for a, name in models.items()}, tasks, read_jsonl(results), out)


def _analyze(models: list, names: list, task: str, size: str, fsdd: Optional[str], limit: int, out: str) -> None:
    from .analysis.run import analyze
    from .tasks import get_task

    manifest = get_task(task).resolve_manifests(size=size, fsdd_root=fsdd)["test"]
    analyze(models, manifest, out, limit=limit, names=names)


# -- the plan ----------------------------------------------------------------------------------------
def recipe_options(cfg, recipe: str, seed: Optional[int] = None, save_every: int = 0) -> dict:
    """The fine-tuning options of ``recipe`` from a reproduce or study config (the same key names)."""
    head_lr = cfg.ft_lr if cfg.ft_head_lr is None else cfg.ft_head_lr
    kw = dict(steps=cfg.ft_steps, lr=cfg.ft_lr, head_lr=head_lr, batch_seconds=cfg.ft_batch_seconds)
    if seed is not None:
        kw["seed"] = seed
    if recipe == "stable":
        kw["beta"] = cfg.beta
        if save_every:
            kw["save_every"] = save_every
    if recipe == "l2sp":
        kw["l2sp_lambda"] = cfg.l2sp_lambda
    if recipe in ("lora", "dora"):
        kw["lora_rank"] = cfg.lora_rank
    return kw


def early_steps(cfg: ReproduceConfig) -> list[int]:
    """Steps at which stable fine-tuning keeps an early checkpoint (the early-stop baseline)."""
    if "early" not in cfg.baselines or not cfg.early_every:
        return []
    return list(range(cfg.early_every, cfg.ft_steps + 1, cfg.early_every))


def plan_rows(cfg: ReproduceConfig, layout: Layout) -> list[Row]:
    """The run's models, in table order."""
    rows = [Row(FBANK, "fbank", ROLE_FBANK), Row(PRETRAINED, cfg.model, ROLE_PRETRAINED),
            Row(REGULAR, str(layout.encoder("regular")), ROLE_REGULAR),
            Row(STABLE, str(layout.encoder("stable")), ROLE_STABLE, alpha=1.0),
            Row(f"{SPEECHFT} (α={cfg.alpha_label})", str(layout.speechft), ROLE_SPEECHFT, alpha=cfg.fixed_alpha)]
    rows += [Row(BASELINE_NAMES[b], str(layout.encoder(b)), ROLE_BASELINE) for b in cfg.baselines if b in BASELINE_NAMES]
    rows += [Row(f"early (step-{k})", str(layout.early(k)), ROLE_EARLY) for k in early_steps(cfg)]
    # α = 0, α and 1 are θ₀, Speech-FT and Stable-FT bit for bit: the sweep uses their rows
    for a in dict.fromkeys(float(x) for x in cfg.sweep_alphas):
        if a not in (0.0, 1.0, cfg.fixed_alpha):
            rows.append(Row(f"sweep α={a:g}", str(layout.sweep_model(a)), ROLE_SWEEP, alpha=a, in_table=False))
    return rows


def sweep_models(cfg: ReproduceConfig, rows: list[Row]) -> dict[float, str]:
    """α -> the row name whose records give the sweep's point at α."""
    by_alpha = {0.0: PRETRAINED}
    by_alpha.update({r.alpha: r.name for r in rows if r.role in (ROLE_STABLE, ROLE_SPEECHFT, ROLE_SWEEP)
                     and r.alpha is not None})
    return {float(a): by_alpha[float(a)] for a in dict.fromkeys(cfg.sweep_alphas)}


def plan_jobs(cfg: ReproduceConfig, out: Path, tasks: list[str], model_fingerprint: str = "") -> tuple[list[Job], list[Row]]:
    """The job graph of one run and the report's rows. ``model_fingerprint``: θ₀'s weight
    fingerprint (part of the key of every job that reads θ₀)."""
    layout = Layout(Path(out))
    rows = plan_rows(cfg, layout)
    theta0 = {"model": model_fingerprint}
    data = dict(size=cfg.size, fsdd=cfg.fsdd)
    jobs = [Job("prepare", _prepare, dict(tasks=[cfg.ft_task], **data), cost=_COST["prepare"], always=True)]
    rest = [t for t in tasks if t != cfg.ft_task]
    if rest:
        jobs.append(Job("prepare tasks", _prepare, dict(tasks=rest, **data), cost=_COST["prepare"], always=True))

    def prepared(task: str) -> str:
        return "prepare" if task == cfg.ft_task else "prepare tasks"

    recipes = ["stable", "regular"] + [b for b in cfg.baselines if b in BASELINE_NAMES]
    for recipe in recipes:
        rdir = layout.finetune(recipe)
        jobs.append(Job(f"finetune-{recipe}", _finetune,
                        dict(model=cfg.model, task=cfg.ft_task, recipe=recipe, rdir=str(rdir), **data,
                             options=recipe_options(cfg, recipe, save_every=cfg.early_every if "early" in cfg.baselines
                                                    else 0)),
                        deps=("prepare",), outputs=(rdir / "encoder" / "config.json",), inputs=theta0, owns=(rdir,),
                        cost=_COST["finetune-stable"] if recipe == "stable" else _COST["finetune"]))
    stable = str(layout.encoder("stable"))
    if cfg.fixed_alpha is None:  # auto…: α chosen from the Stable-FT run, then the merge
        fn, kw = _merge_auto, dict(model=cfg.model, run_dir=str(layout.finetune("stable")), spec=cfg.alpha,
                                   out=str(layout.speechft))
    else:
        fn, kw = _merge, dict(model=cfg.model, finetuned=[stable], alphas=[cfg.fixed_alpha], outs=[str(layout.speechft)])
    jobs.append(Job("merge", fn, kw, deps=("finetune-stable",), outputs=(layout.speechft / "config.json",),
                    inputs=theta0, owns=(layout.speechft,), cost=_COST["merge"]))
    sweep_rows = [r for r in rows if r.role == ROLE_SWEEP]
    if sweep_rows:
        jobs.append(Job("merge sweep", _merge, dict(model=cfg.model, finetuned=[stable], alphas=[r.alpha for r in sweep_rows],
                                                    outs=[r.ref for r in sweep_rows]),
                        deps=("finetune-stable",), outputs=tuple(Path(r.ref) / "config.json" for r in sweep_rows),
                        inputs=theta0, owns=tuple(Path(r.ref) for r in sweep_rows), cost=_COST["merge"] * len(sweep_rows)))
    sweep_tasks = [t for t in cfg.sweep_tasks if t in tasks] if cfg.sweep_alphas else []
    shared = {PRETRAINED, STABLE} | {r.name for r in rows if r.role in (ROLE_SPEECHFT, ROLE_SWEEP)}  # θ₀'s frozen CNN
    made_by = {r.name: f"finetune-{rec}" for r, rec in
               [(r, next(k for k, v in BASELINE_NAMES.items() if v == r.name)) for r in rows if r.role == ROLE_BASELINE]}
    made_by.update({REGULAR: "finetune-regular", STABLE: "finetune-stable"})
    made_by.update({r.name: "finetune-stable" for r in rows if r.role == ROLE_EARLY})
    made_by.update({r.name: "merge" for r in rows if r.role == ROLE_SPEECHFT})
    made_by.update({r.name: "merge sweep" for r in sweep_rows})
    probe_kw = dict(probe_dir=str(layout.probe), seeds=cfg.seeds, limit=cfg.probe_limit, epochs=cfg.probe_epochs, **data)
    sweep_deps = []
    for task in tasks:
        task_rows = [r for r in rows if r.in_table or task in sweep_tasks]
        extract_refs = [r.ref for r in task_rows if r.name in shared]
        jobs.append(Job(f"extract / {task}", _extract,
                        dict(refs=extract_refs, task=task, size=cfg.size, fsdd=cfg.fsdd, limit=cfg.probe_limit),
                        deps=tuple(dict.fromkeys([made_by[r.name] for r in task_rows if r.name in made_by and r.name in shared]
                                                 + [prepared(task)])),
                        inputs=theta0, cost=_COST["extract"] * (1 + len(extract_refs) / 6)))
        cost = _COST.get(f"probe {task}", _COST["probe"])
        for r in task_rows:
            deps = (prepared(task),) + ((made_by[r.name],) if r.name in made_by else ())
            if r.name in shared:
                deps += (f"extract / {task}",)
            jobs.append(Job(f"probe {r.name} / {task}", _probe, dict(name=r.name, ref=r.ref, task=task, **probe_kw),
                            deps=deps, inputs=theta0 if r.role == ROLE_PRETRAINED else {}, outputs=(layout.results,),
                            cost=cost * (1.5 if r.name not in shared and r.role != ROLE_FBANK else 1)))
        if task in sweep_tasks:
            sweep_deps += [f"probe {name} / {task}" for name in sweep_models(cfg, rows).values()]
    if sweep_tasks:
        jobs.append(Job("sweep", _sweep, dict(models={f"{a:g}": n for a, n in sweep_models(cfg, rows).items()},
                                              tasks=sweep_tasks, results=str(layout.results), out=str(layout.sweep)),
                        deps=tuple(dict.fromkeys(sweep_deps)), owns=(layout.sweep,), cost=_COST["sweep"]))
    analyzed = [r for r in rows if r.role in (ROLE_PRETRAINED, ROLE_REGULAR, ROLE_STABLE, ROLE_SPEECHFT)]
    jobs.append(Job("analyze", _analyze,
                    dict(models=[r.ref for r in analyzed], names=[r.name for r in analyzed], task=cfg.ft_task,
                         size=cfg.size, fsdd=cfg.fsdd, limit=cfg.analysis_limit, out=str(layout.analysis)),
                    deps=("prepare", "finetune-regular", "merge"), outputs=(layout.analysis / "analysis.jsonl",),
                    inputs=theta0, owns=(layout.analysis,), cost=_COST["analyze"]))
    jobs += scratch_features(jobs, layout.out, cfg.size, made=set(made_by))
    return jobs, rows


def scratch_features(jobs: list[Job], out: Path, size: str, made: set) -> list[Job]:
    """Give the models a run makes itself (``made``: their record names) a scratch feature cache and
    delete it once read: their features go under ``OUT/features/<model folder>/`` (unkeyed: moving a
    cache reruns nothing), and after the last probe job that reads a task's split folders of a model
    (and the extract jobs that fill them), a ``drop features`` job removes those folders. θ₀, FBANK
    and a user's model keep the shared cache (``data_home()/features``), reused across runs.

    Without this a study leaves ~16 GB of features of models nobody will probe again. Returns the
    drop jobs (``always``: they run on every resume, after their dependencies, and cost nothing when
    there is nothing to delete)."""
    from .probe.runner import split_names

    out = Path(out).resolve()

    def scratch(ref: str) -> str:
        p = Path(ref).resolve()
        return str(scratch_root(out) / file_name(str(p.relative_to(out) if p.is_relative_to(out) else p)))

    probes = [j for j in jobs if j.fn is _probe]
    made_refs = {j.kwargs["ref"] for j in probes if j.kwargs["name"] in made}
    for j in probes:
        if j.kwargs["ref"] in made_refs:
            j.unkeyed["cache_dir"] = scratch(j.kwargs["ref"])
    extracts = {j.kwargs["task"]: j for j in jobs if j.fn is _extract}
    for j in extracts.values():
        if made_refs & set(j.kwargs["refs"]):
            j.unkeyed["cache_dirs"] = [scratch(r) if r in made_refs else None for r in j.kwargs["refs"]]
    names = {t: split_names(t, size) for t in dict.fromkeys(j.kwargs["task"] for j in probes)}
    readers: dict[str, list[Job]] = {}  # cache root -> probe jobs of models stored there
    for j in probes:
        if "cache_dir" in j.unkeyed:
            readers.setdefault(j.unkeyed["cache_dir"], []).append(j)
    drops = []
    for r, js in readers.items():
        for task in dict.fromkeys(j.kwargs["task"] for j in js):
            overlap = [t for t in names if set(names[t]) & set(names[task])]  # tasks on the same audio
            deps = [j.name for j in js if j.kwargs["task"] in overlap]
            deps += [extracts[t].name for t in overlap if t in extracts]
            drops.append(Job(f"drop features / {Path(r).name} / {task}", _drop_features,
                             dict(root=r, names=names[task]), deps=tuple(dict.fromkeys(deps)), always=True, cost=0.0))
    return drops


def prune_scratch(out: Path, jobs: list[Job]) -> None:
    """Before any worker starts: remove the scratch feature folders of models no longer in the plan
    (``OUT/features/<model folder>`` that no drop job of ``jobs`` covers), left by an interrupted run
    whose config then changed."""
    import shutil

    scratch = scratch_root(out)
    keep = {Path(j.kwargs["root"]).name for j in jobs if j.fn is _drop_features}
    for p in sorted(scratch.iterdir()) if scratch.is_dir() else []:
        if p.is_dir() and p.name not in keep:
            log.info("%s: removing the features of a model no longer in the config", p)
            shutil.rmtree(p)


def _prune_records(layout: Layout, jobs: list[Job]) -> None:
    """Drop probe records no job of this plan owns (models or tasks no longer in the config), before
    any worker starts: ``probe/results.jsonl`` then holds only this config's models."""
    owned = {(j.kwargs["name"], j.kwargs["task"]) for j in jobs if j.fn is _probe}
    recs = read_jsonl(layout.results)
    keep = [r for r in recs if (r.get("model"), r.get("task")) in owned]
    if len(keep) < len(recs):
        log.info("%s: dropping %d record(s) of models or tasks no longer in the config", layout.results,
                 len(recs) - len(keep))
        rewrite_jsonl(layout.results, keep)


def reproduce(cfg: ReproduceConfig, out_dir: str | Path, quick: bool = False, workers: Optional[int] = None) -> Path:
    """Run the whole loop; returns the path of ``report.md``.

    ``workers``: processes running independent jobs at once (default: :func:`default_workers`, two
    single-thread processes on a 2-core machine, one on a GPU machine).
    """
    from .models.io import load_encoder

    if quick:
        cfg = ReproduceConfig.quick(cfg)
    layout = Layout(Path(out_dir))
    check_writable(layout.out)
    layout.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(layout.out / "config.yaml", cfg.to_yaml())
    stages = Stages(layout.out)
    tasks, dropped = available_tasks((cfg.ft_task, *cfg.tasks), cfg.fsdd)
    if dropped:
        log.warning("no FSDD copy found (pass --fsdd PATH or set SPEECHFT_FSDD): skipping %s", ", ".join(dropped))
    workers, threads = default_workers(workers)
    jobs, rows = plan_jobs(cfg, layout.out, tasks, model_fingerprint=load_encoder(cfg.model).fingerprint())
    _prune_records(layout, jobs)
    prune_scratch(layout.out, jobs)
    log.info("reproduce: %d jobs on %d worker(s) x %d thread(s)", len(jobs), workers, threads)
    results = run_jobs(jobs, stages, workers=workers, threads=threads)
    # the drop jobs emptied OUT/features; removed here, not by a drop job (another worker may be creating a
    # model's folder in it meanwhile)
    remove_empty_dir(scratch_root(layout.out))

    from .report.markdown import write_report

    current = {k for j in jobs if j.fn is _probe for k in results[j.name]}
    report = write_report(layout, cfg, rows, tasks, dropped, {j.name: stages.done[j.name] for j in jobs},
                          run_info={"workers": workers, "threads": threads, "jobs": len(jobs)},
                          probe_keys=current)
    log.info("report written to %s", report)
    return report
