"""`speechft reproduce`: the paper's loop from one config.

prepare data → stable fine-tuning on the fine-tuning task → regular fine-tuning (+ baselines) →
merge (α) → probe every model on every task (FBANK as the score's lower reference) → α sweep →
analyses → ``OUT/report.md``.

The loop is a graph of jobs (:func:`plan_jobs`) run by :func:`speechft.utils.jobs.run_jobs`, on
several worker processes when the machine has the cores: the two fine-tunings run side by side, then
the probes, one job per (model, task). θ₀, Stable-FT, Speech-FT and the sweep's interpolations share
θ₀'s frozen CNN, so one job per task extracts all their features in one pass (the CNN runs once).

Every job is resumable: a job recorded as done in ``OUT/stages.jsonl`` (with its output present)
is skipped, and the jobs themselves resume (fine-tuning from its last checkpoint, probing skips
(model, task, seed) records already written), so rerunning after an interruption redoes only what is
missing.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from .pipeline_config import ReproduceConfig
from .utils.io import atomic_write_text, check_writable
from .utils.jobs import Job, Stages, default_workers, run_jobs

log = logging.getLogger(__name__)

PRETRAINED, REGULAR, STABLE, SPEECHFT, FBANK = "pre-trained", "regular FT", "Stable-FT", "Speech-FT", "FBANK"
BASELINE_NAMES = {"l2sp": "L2-SP", "lora": "LoRA", "dora": "DoRA"}


def _available_tasks(cfg: ReproduceConfig) -> tuple[list[str], list[str]]:
    """Tasks to run, and tasks dropped (FSDD tasks when no FSDD copy can be found)."""
    from .paths import default_fsdd_root
    from .tasks import get_task

    keep, dropped = [], []
    fsdd = cfg.fsdd or default_fsdd_root()
    for name in dict.fromkeys((cfg.ft_task, *cfg.tasks)):
        t = get_task(name)
        if t.corpus == "fsdd" and fsdd is None:
            dropped.append(name)
        else:
            keep.append(name)
    return keep, dropped


# Rough single-thread seconds of each job on the default-size demo: only used to start the jobs on
# the longest remaining chain first.
_COST = {"prepare": 15, "finetune-stable": 100, "finetune": 170, "merge": 1, "extract": 45, "probe": 8,
         "probe lite-asr": 40, "probe lite-pr": 18, "sweep": 5, "analyze": 90}


def _device() -> str:
    """Probes and feature extraction run on the GPU when there is one (fine-tuning picks it itself)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _prepare(tasks: list, size: str, fsdd: Optional[str]) -> None:
    from .tasks import get_task

    for name in tasks:
        get_task(name).resolve_manifests(size=size, fsdd_root=fsdd)


def _finetune(cfg: ReproduceConfig, recipe: str, rdir: str) -> None:
    from .finetune import finetune

    rdir = Path(rdir)
    kw = dict(recipe=recipe, steps=cfg.ft_steps, lr=cfg.ft_lr, batch_seconds=cfg.ft_batch_seconds, size=cfg.size,
              fsdd_root=cfg.fsdd)
    if recipe == "stable":
        kw["beta"] = cfg.beta
        if "early" in cfg.baselines and cfg.early_every:
            kw["save_every"] = cfg.early_every
    if recipe == "l2sp":
        kw["l2sp_lambda"] = cfg.l2sp_lambda
    if recipe in ("lora", "dora"):
        kw["lora_rank"] = cfg.lora_rank
    finetune(cfg.model, cfg.ft_task, rdir, resume=(rdir / "checkpoints").exists(), **kw)


def _merge(cfg: ReproduceConfig, stable: str, merged: str) -> None:
    from .merge import merge_models

    merge_models(cfg.model, [stable], merged, alpha=cfg.alpha, overwrite=True)


def _extract(cfg: ReproduceConfig, task: str, models: list, stable: str, sweep_alphas: list) -> None:
    """Features of every model sharing θ₀'s CNN on one task, in one pass (the CNN runs once)."""
    from .merge.sweep import merged_encoders
    from .probe import extract_features

    encs = list(models)
    if sweep_alphas:
        encs += [e for _, e in merged_encoders(cfg.model, [stable], sweep_alphas)]
    extract_features(encs, [task], size=cfg.size, fsdd_root=cfg.fsdd, limit=cfg.probe_limit, device=_device())


def _probe(cfg: ReproduceConfig, name: str, ref: str, tasks: list, probe_dir: str) -> None:
    from .probe import run_probe

    run_probe(ref, tasks, probe_dir, seeds=tuple(range(cfg.seeds)), size=cfg.size, fsdd_root=cfg.fsdd,
              limit=cfg.probe_limit, model_name=name, epochs=cfg.probe_epochs, device=_device())


def _probe_sweep_alpha(cfg: ReproduceConfig, alpha: float, stable: str, task: str, probe_dir: str) -> None:
    """The sweep's model at ``alpha`` on one task; :func:`run_sweep` then finds the record."""
    from .merge.sweep import merged_encoders, sweep_model_name
    from .probe import run_probe

    for a, enc in merged_encoders(cfg.model, [stable], [alpha]):
        run_probe(enc, [task], probe_dir, seeds=tuple(range(cfg.seeds)), size=cfg.size, fsdd_root=cfg.fsdd,
                  limit=cfg.probe_limit, model_name=sweep_model_name("linear", a), epochs=cfg.probe_epochs,
                  device=_device())


def _probe_early(cfg: ReproduceConfig, tasks: list, stable_dir: str, probe_dir: str) -> None:
    for p in sorted((Path(stable_dir) / "early").glob("step-*")):
        _probe(cfg, f"early ({p.name})", str(p), tasks, probe_dir)


def _sweep(cfg: ReproduceConfig, stable: str, tasks: list, out: str, probe_dir: str) -> None:
    from .merge.sweep import run_sweep

    run_sweep(cfg.model, [stable], cfg.sweep_alphas, tasks, out, size=cfg.size, fsdd_root=cfg.fsdd,
              seeds=tuple(range(cfg.seeds)), epochs=cfg.probe_epochs, limit=cfg.probe_limit, probe_dir=probe_dir)


def _analyze(cfg: ReproduceConfig, models: list, names: list, out: str) -> None:
    from .analysis.run import analyze
    from .tasks import get_task

    manifest = get_task(cfg.ft_task).resolve_manifests(size=cfg.size, fsdd_root=cfg.fsdd)["test"]
    analyze(models, manifest, out, limit=cfg.analysis_limit, names=names)


def plan_jobs(cfg: ReproduceConfig, out: Path, tasks: list[str]) -> tuple[list[Job], dict[str, str]]:
    """The job graph of one run, and the rows of the report's table (name -> model reference)."""
    ft_dir, probe_dir, merged = out / "finetune", out / "probe", out / "models" / "speech-ft"
    stable = str(ft_dir / "stable" / "encoder")
    sft_name = f"{SPEECHFT} (α={cfg.alpha:g})"
    jobs = [Job("prepare", _prepare, dict(tasks=[cfg.ft_task], size=cfg.size, fsdd=cfg.fsdd), cost=_COST["prepare"])]
    rest = [t for t in tasks if t != cfg.ft_task]
    if rest:
        jobs.append(Job("prepare tasks", _prepare, dict(tasks=rest, size=cfg.size, fsdd=cfg.fsdd), cost=_COST["prepare"]))

    def prepared(task: str) -> str:
        return "prepare" if task == cfg.ft_task else "prepare tasks"

    recipes = ["stable", "regular"] + [b for b in cfg.baselines if b in BASELINE_NAMES]
    for recipe in recipes:
        rdir = ft_dir / recipe
        jobs.append(Job(f"finetune-{recipe}", _finetune, dict(cfg=cfg, recipe=recipe, rdir=str(rdir)), deps=("prepare",),
                        outputs=(rdir / "encoder" / "config.json",),
                        cost=_COST["finetune-stable"] if recipe == "stable" else _COST["finetune"]))
    jobs.append(Job("merge", _merge, dict(cfg=cfg, stable=stable, merged=str(merged)), deps=("finetune-stable",),
                    outputs=(merged / "config.json",), cost=_COST["merge"]))

    models = {FBANK: "fbank", PRETRAINED: cfg.model, REGULAR: str(ft_dir / "regular" / "encoder"), STABLE: stable,
              sft_name: str(merged)}
    tuned_by = {REGULAR: "finetune-regular"}
    for b in recipes[2:]:
        models[BASELINE_NAMES[b]] = str(ft_dir / b / "encoder")
        tuned_by[BASELINE_NAMES[b]] = f"finetune-{b}"
    sweep_tasks = [t for t in cfg.sweep_tasks if t in tasks] if cfg.sweep_alphas else []
    # α = 0, α and 1 are θ₀, Speech-FT and Stable-FT bit for bit: the sweep reuses their records
    extra = [a for a in dict.fromkeys(float(x) for x in cfg.sweep_alphas) if a not in (0.0, 1.0, float(cfg.alpha))]
    shared = {PRETRAINED, STABLE, sft_name}  # frozen CNN: identical to θ₀'s
    sweep_deps = []
    for task in tasks:
        alphas = extra if task in sweep_tasks else []
        jobs.append(Job(f"extract / {task}", _extract,
                        dict(cfg=cfg, task=task, models=[models[n] for n in (PRETRAINED, STABLE, sft_name)],
                             stable=stable, sweep_alphas=alphas),
                        deps=("merge", prepared(task)), cost=_COST["extract"] * (1 + len(alphas) / 3)))
        cost = _COST.get(f"probe {task}", _COST["probe"])
        for name, ref in models.items():
            if name in shared:
                deps = (f"extract / {task}",)
            elif name == FBANK:
                deps = (prepared(task),)
            else:
                deps = (prepared(task), tuned_by[name])
            jobs.append(Job(f"probe {name} / {task}", _probe,
                            dict(cfg=cfg, name=name, ref=ref, tasks=[task], probe_dir=str(probe_dir)), deps=deps,
                            cost=cost * (1.5 if name not in shared and name != FBANK else 1)))
            if task in sweep_tasks and name in shared:
                sweep_deps.append(f"probe {name} / {task}")
        for a in alphas:
            jobs.append(Job(f"probe sweep α={a:g} / {task}", _probe_sweep_alpha,
                            dict(cfg=cfg, alpha=a, stable=stable, task=task, probe_dir=str(probe_dir)),
                            deps=(f"extract / {task}",), cost=cost))
            sweep_deps.append(f"probe sweep α={a:g} / {task}")
    if "early" in cfg.baselines and cfg.early_every:
        jobs.append(Job("probe early checkpoints", _probe_early,
                        dict(cfg=cfg, tasks=tasks, stable_dir=str(ft_dir / "stable"), probe_dir=str(probe_dir)),
                        deps=("finetune-stable", "prepare tasks" if rest else "prepare"), cost=100))
    if sweep_tasks:
        jobs.append(Job("sweep", _sweep, dict(cfg=cfg, stable=stable, tasks=sweep_tasks, out=str(out / "sweep"),
                                              probe_dir=str(probe_dir)), deps=tuple(sweep_deps), cost=_COST["sweep"]))
    jobs.append(Job("analyze", _analyze,
                    dict(cfg=cfg, models=[cfg.model, models[REGULAR], stable, str(merged)],
                         names=[PRETRAINED, REGULAR, STABLE, sft_name], out=str(out / "analysis")),
                    deps=("finetune-regular", "merge"), outputs=(out / "analysis" / "analysis.jsonl",),
                    cost=_COST["analyze"]))
    return jobs, models


def reproduce(cfg: ReproduceConfig, out_dir: str | Path, quick: bool = False, workers: Optional[int] = None) -> Path:
    """Run the whole loop; returns the path of ``report.md``.

    ``workers``: processes running independent jobs at once (default: :func:`default_workers`, two
    single-thread processes on a 2-core machine, one on a GPU machine).
    """
    if quick:
        cfg = ReproduceConfig.quick(cfg)
    out = Path(out_dir)
    check_writable(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", cfg.to_yaml())
    stages = Stages(out)
    tasks, dropped = _available_tasks(cfg)
    if dropped:
        log.warning("no FSDD copy found (pass --fsdd PATH or set SPEECHFT_FSDD): skipping %s", ", ".join(dropped))
    workers, threads = default_workers(workers)
    jobs, models = plan_jobs(cfg, out, tasks)
    log.info("reproduce: %d jobs on %d worker(s) x %d thread(s)", len(jobs), workers, threads)
    run_jobs(jobs, stages, workers=workers, threads=threads)
    ft_dir = out / "finetune"
    if "early" in cfg.baselines and cfg.early_every:
        for p in sorted((ft_dir / "stable" / "early").glob("step-*")):
            models[f"early ({p.name})"] = str(p)

    from .report.markdown import write_report

    report = write_report(out, cfg, list(models), tasks, dropped, stages.done,
                          run_info={"workers": workers, "threads": threads, "jobs": len(jobs)})
    log.info("report written to %s", report)
    return report
