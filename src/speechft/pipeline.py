"""`speechft reproduce`: the paper's loop from one config.

prepare data → stable fine-tuning on the fine-tuning task → regular fine-tuning (+ baselines) →
merge (α) → probe every model on every task (FBANK as the score's lower reference) → α sweep →
analyses → ``OUT/report.md``.

Every stage is resumable: a stage recorded as done in ``OUT/stages.jsonl`` (with its output present)
is skipped, and the stages themselves resume (fine-tuning from its last checkpoint, probing skips
(model, task, seed) records already written), so rerunning after an interruption redoes only what is
missing.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

from .pipeline_config import ReproduceConfig
from .utils.io import append_jsonl, atomic_write_text, check_writable, read_jsonl

log = logging.getLogger(__name__)

PRETRAINED, REGULAR, STABLE, SPEECHFT, FBANK = "pre-trained", "regular FT", "Stable-FT", "Speech-FT", "FBANK"
BASELINE_NAMES = {"l2sp": "L2-SP", "lora": "LoRA", "dora": "DoRA"}


class Stages:
    """Stage bookkeeping: ``stages.jsonl`` holds one record per finished stage with its wall time."""

    def __init__(self, out: Path):
        self.path = out / "stages.jsonl"
        self.done = {r["stage"]: r for r in read_jsonl(self.path) if r.get("status") == "done"}

    def run(self, name: str, fn: Callable[[], object], outputs: tuple = ()) -> None:
        if name in self.done and all(Path(p).exists() for p in outputs):
            log.info("stage %s: done already (%.0f s), skipping", name, self.done[name]["seconds"])
            return
        log.info("stage %s: starting", name)
        t0 = time.time()
        fn()
        rec = {"stage": name, "status": "done", "seconds": round(time.time() - t0, 1), "finished": time.time()}
        append_jsonl(self.path, rec)
        self.done[name] = rec

    def timings(self) -> dict[str, float]:
        return {k: v["seconds"] for k, v in self.done.items()}


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


def reproduce(cfg: ReproduceConfig, out_dir: str | Path, quick: bool = False) -> Path:
    """Run the whole loop; returns the path of ``report.md``."""
    from .finetune import finetune
    from .merge import merge_models
    from .probe import run_probe
    from .tasks import get_task

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

    def prepare():
        for name in tasks:
            get_task(name).resolve_manifests(size=cfg.size, fsdd_root=cfg.fsdd)

    stages.run("prepare", prepare)

    ft_dir = out / "finetune"
    recipes = ["stable", "regular"] + [b for b in cfg.baselines if b in BASELINE_NAMES]
    for recipe in recipes:
        rdir = ft_dir / recipe
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
        stages.run(f"finetune-{recipe}",
                   lambda rdir=rdir, kw=kw: finetune(cfg.model, cfg.ft_task, rdir, resume=(rdir / "checkpoints").exists(), **kw),
                   outputs=(rdir / "encoder" / "config.json",))

    merged = out / "models" / "speech-ft"
    stages.run("merge", lambda: merge_models(cfg.model, [str(ft_dir / "stable" / "encoder")], merged, alpha=cfg.alpha,
                                             overwrite=True),
               outputs=(merged / "config.json",))

    models = {FBANK: "fbank", PRETRAINED: cfg.model, REGULAR: str(ft_dir / "regular" / "encoder"),
              STABLE: str(ft_dir / "stable" / "encoder"), f"{SPEECHFT} (α={cfg.alpha:g})": str(merged)}
    for b in recipes[2:]:
        models[BASELINE_NAMES[b]] = str(ft_dir / b / "encoder")
    if "early" in cfg.baselines and cfg.early_every:
        for p in sorted((ft_dir / "stable" / "early").glob("step-*")):
            models[f"early ({p.name})"] = str(p)

    probe_dir = out / "probe"
    for name, ref in models.items():
        stages.run(f"probe {name}", lambda name=name, ref=ref: run_probe(
            ref, tasks, probe_dir, seeds=tuple(range(cfg.seeds)), size=cfg.size, fsdd_root=cfg.fsdd,
            limit=cfg.probe_limit, model_name=name, epochs=cfg.probe_epochs))

    sweep_tasks = [t for t in cfg.sweep_tasks if t in tasks]
    if sweep_tasks and cfg.sweep_alphas:
        from .merge.sweep import run_sweep

        stages.run("sweep", lambda: run_sweep(cfg.model, [str(ft_dir / "stable" / "encoder")], cfg.sweep_alphas,
                                              sweep_tasks, out / "sweep", size=cfg.size, fsdd_root=cfg.fsdd,
                                              seeds=tuple(range(cfg.seeds)), epochs=cfg.probe_epochs,
                                              limit=cfg.probe_limit, probe_dir=probe_dir))

    def analysis():
        from .analysis.run import analyze

        manifest = get_task(cfg.ft_task).resolve_manifests(size=cfg.size, fsdd_root=cfg.fsdd)["test"]
        analyze([cfg.model, models[REGULAR], models[STABLE], str(merged)], manifest, out / "analysis",
                limit=cfg.analysis_limit, names=[PRETRAINED, REGULAR, STABLE, f"{SPEECHFT} (α={cfg.alpha:g})"])

    stages.run("analyze", analysis, outputs=(out / "analysis" / "analysis.jsonl",))

    from .report.markdown import write_report

    report = write_report(out, cfg, list(models), tasks, dropped, stages.timings())
    log.info("report written to %s", report)
    return report
