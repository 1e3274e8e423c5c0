"""`speechft finetune`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import (DEFAULT_MODEL, TARGET_FIELD_HELP, TASK_MANIFESTS_HELP, TASK_COLUMNS_HELP, TASK_METRIC_HELP, TASK_TYPE_HELP,
                      check_models, device_option, get_task, user_errors, user_task_from_options)


def command(
    model: Optional[str] = typer.Option(None, "--model", help="Pre-trained encoder θ₀: speechft-tiny (default), a "
                                        "model folder or a hub id (read from OUT/config.yaml with --resume).",
                                        show_default=False),
    task: Optional[str] = typer.Option(None, "--task", help="Task to fine-tune on (see 'speechft probe --list'); with "
                                       "--task-manifests, the name of your task (as --task-name). Required unless "
                                       "--task-manifests or --resume."),
    out: Path = typer.Option(..., "--out", help="Output folder: encoder/, head/, config.yaml, metrics.jsonl, "
                             "checkpoints/, early/."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="stable (Speech-FT, default), regular, l2sp, lora "
                                         "or dora."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps (default 400; 40 with --quick)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config (e.g. configs/finetune-stable.yaml); "
                                          "options below override it."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its newest checkpoint."),
    quick: bool = typer.Option(False, "--quick", help="Quick-size lite data and a 40-step run (smoke test)."),
    fsdd: Optional[Path] = typer.Option(None, "--fsdd", help="Free Spoken Digit Dataset clone (fsdd-* tasks)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Drop invalid manifest rows (logged) instead of failing."),
    save_every: Optional[int] = typer.Option(None, "--save-every", help="Keep the encoder every K steps in "
                                             "OUT/early/step-K (the early-checkpoint baseline)."),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="Dev evaluation every K steps (default 100)."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Resumable checkpoint every K "
                                                   "steps (default 100; 20 with --quick). Ctrl-C or SIGTERM also "
                                                   "saves one before stopping."),
    select: Optional[str] = typer.Option(None, "--select", help="Saved encoder/head: 'last' step (default) or 'best' "
                                         "dev metric."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Encoder peak learning rate (default 1e-4)."),
    head_lr: Optional[float] = typer.Option(None, "--head-lr", help="Head peak learning rate (default 1e-3)."),
    beta: Optional[float] = typer.Option(None, "--beta", help="Share of steps where only the head trains "
                                         "(stable: 0.1; other recipes: 0)."),
    l2sp_lambda: Optional[float] = typer.Option(None, "--l2sp-lambda", help="l2sp: weight of ‖θ−θ₀‖² (default 1.0)."),
    lora_rank: Optional[int] = typer.Option(None, "--lora-rank", help="lora/dora: adapter rank (default 8)."),
    batch_seconds: Optional[float] = typer.Option(None, "--batch-seconds", help="Padded audio seconds per batch and "
                                                  "process (default 16)."),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum", help="Batches per optimizer step (default 1)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed (default 0)."),
    layer_sum: Optional[bool] = typer.Option(None, "--layer-sum/--last-layer", help="Head input: a learnable weighted "
                                             "sum of all hidden states, or the last one (default)."),
    task_manifests: Optional[str] = typer.Option(None, "--task-manifests", help=TASK_MANIFESTS_HELP),
    task_type: Optional[str] = typer.Option(None, "--task-type", help=TASK_TYPE_HELP, show_default=False),
    task_name: Optional[str] = typer.Option(None, "--task-name", help="Your task's name (default: --task, else "
                                            "'user').", show_default=False),
    target_field: Optional[str] = typer.Option(None, "--target-field", help=TARGET_FIELD_HELP, show_default=False),
    task_metric: Optional[str] = typer.Option(None, "--task-metric", help=TASK_METRIC_HELP, show_default=False),
    task_columns: Optional[str] = typer.Option(None, "--task-columns", help=TASK_COLUMNS_HELP, show_default=False),
    device: str = device_option(),
) -> None:
    """Fine-tune an encoder on one task with Speech-FT's stable recipe or a baseline (regular, L2-SP, LoRA,
    DoRA, early checkpoints via --save-every); writes the fine-tuned encoder as a Hugging Face folder.
    Several processes/GPUs: run it under 'accelerate launch' or 'torchrun -m speechft.cli finetune ...'."""
    with user_errors(out=out, device=device):
        from ..finetune import TrainingDiverged, finetune

        if not resume:
            model = model or DEFAULT_MODEL
        check_models([model])
        task_arg = user_task_from_options(task_manifests, task_type, task_name or task or "user", target_field,
                                          task_metric, task_columns) or task
        if not resume and task_arg is None:
            raise ValueError("--task (or --task-manifests) is required unless --resume")
        if isinstance(task_arg, str):
            get_task(task_arg)  # an unknown name fails now, with "did you mean"
        try:
            path = finetune(model, task_arg, out, recipe=recipe, steps=steps, config=str(config) if config else None,
                            resume=resume, quick=quick, fsdd_root=str(fsdd) if fsdd else None, skip_bad=skip_bad,
                            save_every=save_every, eval_every=eval_every, checkpoint_every=checkpoint_every,
                            select=select, lr=lr, head_lr=head_lr,
                            beta=beta, l2sp_lambda=l2sp_lambda, lora_rank=lora_rank, batch_seconds=batch_seconds,
                            grad_accum=grad_accum, seed=seed, layer_sum=layer_sum)
        except TrainingDiverged as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1)
    if (path / "encoder" / "config.json").exists():
        typer.echo(f"encoder: {path / 'encoder'}\nhead: {path / 'head'}\nmetrics: {path / 'metrics.jsonl'}")
