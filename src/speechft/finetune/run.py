"""`finetune()`: resolve what to run, build the model, run the loop, write the artifacts.

Output folder::

    OUT/
      config.yaml            run: (model, task, recipe, data, world size, command) + config: (resolved)
      metrics.jsonl          train records (loss per unit, lr, head_lr, grad norm, phase) and dev records
      checkpoints/step-K/    resumable checkpoints (the newest ``keep_checkpoints``)
      encoder/               the fine-tuned encoder: a plain HF dir (LoRA/DoRA merged) + model card
      head/                  the task head: head.safetensors, head.json, vocab.json
      early/step-K/          encoders kept every ``save_every`` steps (early-checkpoint baseline)
      best/                  with select=best: encoder/ and head/ of the best dev metric so far
      tensorboard/           when the tensorboard package is installed
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional, Union

import torch

from ..tasks import Task, get_task, user_task
from ..utils.io import check_not_input, check_writable
from ..utils.names import read_yaml_mapping
from ..utils.signals import StopAtStep
from .checkpoint import latest_checkpoint, load_checkpoint
from .config import QUICK, FinetuneConfig, check_keys, load_config, save_run_config
from .data import load_task_data
from .loop import train
from .recipes import get_recipe, resolved_knobs
from .schedule import head_only_steps

log = logging.getLogger(__name__)

# Keys that may change when resuming: they never change the weights.
RESUME_FREE = ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "save_every", "tensorboard",
               "num_workers", "num_threads")


def finetune(model: Optional[str], task: Union[str, Task, None], out_dir: str | Path, recipe: Optional[str] = "stable",
             steps: Optional[int] = None, config=None, resume: bool = False, *, size: str = "default",
             fsdd_root: Optional[str] = None, skip_bad: bool = False, quick: bool = False, progress: bool = True,
             stop_after: Optional[int] = None, command: Optional[str] = None, **overrides) -> Path:
    """Fine-tune encoder ``model`` on ``task`` with ``recipe``; returns ``out_dir`` (layout above).

    ``config``: a YAML path or a :class:`FinetuneConfig`; ``overrides``: config keys (``lr``,
    ``beta``, ``l2sp_lambda``, ...). ``resume`` continues from the newest checkpoint in
    ``out_dir`` (model/task/recipe may then be None: they are read from ``config.yaml``).
    ``quick``: quick lite data and a short run. ``stop_after`` stops after that many steps with a
    checkpoint, as an interruption would (the run is then finished with ``resume=True``).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    out = Path(out_dir)
    check_not_input(out, {"--model": model})  # OUT/encoder, OUT/head, ... are replaced
    check_writable(out)
    run, cfg = _resolve(out, model, task, recipe, steps, config, resume, quick, overrides,
                        size="quick" if quick else size, fsdd_root=fsdd_root, skip_bad=skip_bad, command=command)
    task_obj = _task_from_run(run, task)
    if run.get("finished") and resume and (out / "encoder" / "config.json").exists():
        log.info("%s: this run already finished (%d steps); nothing to do", out, cfg.steps)
        return out
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)

    # Under `accelerate launch` / `torchrun` this joins the process group; alone it is one process.
    # find_unused_parameters: in the head-only phase the encoder is outside the autograd graph, so
    # DDP must not wait for its gradients (they stay None and Adam skips those parameters).
    accelerator = Accelerator(mixed_precision=_mixed_precision(cfg.mixed_precision), cpu=_multi_cpu(),
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    run["world_size"] = accelerator.num_processes
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_run_config(out / "config.yaml", cfg, run)

    with accelerator.main_process_first():  # built-in corpora are prepared once, by the main process
        data = load_task_data(task_obj, run["size"], run["fsdd_root"], run["skip_bad"], cfg)
    state = None
    if resume and (ckpt := latest_checkpoint(out)) is not None:
        state = load_checkpoint(ckpt)
        if state[0]["world_size"] != accelerator.num_processes:
            raise ValueError(f"{ckpt}: saved by {state[0]['world_size']} processes, resumed with "
                             f"{accelerator.num_processes}; an exact resume needs the same number")
        log.info("resuming from %s (step %d of %d)", ckpt, state[0]["step"], cfg.steps)
    with StopAtStep("fine-tuning") as stop:  # SIGINT/SIGTERM: finish the step, save a checkpoint, say how to resume
        finished = train(run, cfg, data, accelerator, out, resume_from=state, progress=progress, stop_after=stop_after,
                         stop=stop)
    if finished and accelerator.is_main_process:
        run["finished"] = True
        save_run_config(out / "config.yaml", cfg, run)
    accelerator.wait_for_everyone()
    return out


def _multi_cpu() -> bool:
    """Several processes without GPUs (e.g. ``torchrun --nproc_per_node 2`` on CPU): Accelerate only
    forms a gloo process group when told to run on the CPU."""
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 or "LOCAL_RANK" in os.environ
    return launched and not torch.cuda.is_available()


def _mixed_precision(mode: str) -> str:
    if mode != "auto":
        return mode
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def _task_from_run(run: dict, task) -> Task:
    if isinstance(task, Task):
        return task
    d = run.get("task_def")
    if d:
        return user_task(d["name"], tuple(d["manifests"]), d["kind"], d["target_field"], metric=d["metric"])
    return get_task(run["task"])


def load_run(out: str | Path) -> tuple[dict, FinetuneConfig, Task]:
    """``(run, cfg, task)`` of a fine-tuning output folder, from its ``config.yaml``."""
    saved = Path(out) / "config.yaml"
    if not _saved_run(Path(out)):
        raise FileNotFoundError(f"{saved}: not a fine-tuning run's config (no run.model / run.task)")
    run = read_yaml_mapping(saved)["run"]
    return run, load_config(saved), _task_from_run(run, None)


def _model_ref(model) -> str:
    """Local folders are recorded as absolute paths (resume from another working directory)."""
    p = Path(str(model)).expanduser()
    return str(p.resolve()) if p.is_dir() else str(model)


def _run_record(model: str, task: Union[str, Task], recipe: str, size: str, fsdd_root, skip_bad: bool,
                command: Optional[str]) -> dict:
    t = task if isinstance(task, Task) else get_task(str(task))
    run = {"model": _model_ref(model), "task": t.name, "recipe": recipe, "size": size,
           "fsdd_root": str(fsdd_root) if fsdd_root else None, "skip_bad": bool(skip_bad),
           "command": command or (" ".join(["speechft", *sys.argv[1:]]) if "speechft" in sys.argv[0] else None)}
    if t.corpus == "user":
        run["task_def"] = {"name": t.name, "kind": t.kind, "target_field": t.target_field, "metric": t.metric,
                           "manifests": list(t.manifests)}
    return run


def _saved_run(out: Path) -> bool:
    """``OUT/config.yaml`` names a model and a task (the run may not have reached a checkpoint)."""
    saved = out / "config.yaml"
    if not saved.is_file():
        return False
    run = read_yaml_mapping(saved).get("run") or {}
    return bool(run.get("model") and run.get("task"))


def _resolve(out: Path, model, task, recipe, steps, config, resume, quick, overrides, *, size, fsdd_root,
             skip_bad, command) -> tuple[dict, FinetuneConfig]:
    """``(run, cfg)``: from the saved config.yaml when resuming, else from the arguments."""
    ckpt = latest_checkpoint(out)
    if resume and (ckpt is not None or _saved_run(out)):  # no checkpoint yet: from step 0, with the saved settings
        if config is not None:
            raise ValueError("--config cannot be combined with --resume: the run's saved config.yaml is used")
        saved = out / "config.yaml"
        if not saved.exists():
            raise FileNotFoundError(f"{out}: has checkpoints but no config.yaml; cannot resume")
        run, cfg = read_yaml_mapping(saved).get("run") or {}, load_config(saved)
        given = {"model": _model_ref(model) if model else None,
                 "task": task.name if isinstance(task, Task) else task, "recipe": recipe}
        for key, value in given.items():
            if value is not None and value != run.get(key):
                raise ValueError(f"--resume: {out} was started with {key}={run.get(key)!r}, not {value!r}")
        if steps is not None and steps != cfg.steps:
            raise ValueError(f"--resume: the run was started with steps={cfg.steps} (the schedule depends on it); "
                             f"got steps={steps}")
        changed = {k: v for k, v in overrides.items() if v is not None and v != getattr(cfg, k, v)}
        fixed = sorted(k for k in changed if k not in RESUME_FREE)
        if fixed:
            raise ValueError(f"--resume: {', '.join(f'{k}={getattr(cfg, k)!r}' for k in fixed)} were used by the run "
                             f"and cannot change (only {', '.join(RESUME_FREE)} may)")
        if ckpt is None and not run.get("finished"):
            log.warning("--resume: no checkpoint in %s yet; starting from step 0 with the settings in %s", out, saved)
            (out / "metrics.jsonl").unlink(missing_ok=True)
        return run, cfg.replace(**changed)
    if ckpt is not None:
        raise FileExistsError(f"{out} already holds a fine-tuning run ({ckpt.name}); pass --resume to continue it "
                              "or choose another --out")
    if resume:
        log.warning("--resume: no checkpoint in %s yet; starting from step 0", out)
    if model is None or task is None:
        raise ValueError("a model and a task are required (only --resume reads them from OUT/config.yaml)")
    recipe = recipe or "stable"
    rec = get_recipe(recipe)
    check_keys(overrides, "finetune()")
    if isinstance(config, FinetuneConfig):
        cfg = config.replace(**overrides, steps=steps)
    else:
        cfg = load_config(config, base=QUICK if quick else None, **overrides, steps=steps)
    knobs = resolved_knobs(rec, cfg)
    run = _run_record(model, task, rec.name, size, fsdd_root, skip_bad, command)
    run.update(knobs, head_only_steps=head_only_steps(cfg.steps, knobs["beta"]))
    if (out / "metrics.jsonl").exists():
        (out / "metrics.jsonl").unlink(missing_ok=True)  # a run that died before its first checkpoint: start clean
    return run, cfg
