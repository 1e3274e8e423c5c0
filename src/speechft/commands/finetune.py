"""`speechft finetune`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import split_csv, user_errors


def command(
    model: Optional[str] = typer.Option(None, "--model", help="Pre-trained encoder θ₀: speechft-tiny, a model folder "
                                        "or a hub id (read from OUT/config.yaml with --resume)."),
    task: Optional[str] = typer.Option(None, "--task", help="Task to fine-tune on (see 'speechft probe --list'); with "
                                       "--task-manifests, the name of your task."),
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
    task_manifests: Optional[str] = typer.Option(None, "--task-manifests", help="Your own task: "
                                                 "train.jsonl,dev.jsonl,test.jsonl."),
    task_type: str = typer.Option("ctc", "--task-type", help="Your task's kind: ctc (vocabulary from the train "
                                  "manifest) or classify."),
    target_field: Optional[str] = typer.Option(None, "--target-field", help="Your task's manifest field: text, "
                                               "phones, label, speaker, language (default: text for ctc, label)."),
    task_metric: Optional[str] = typer.Option(None, "--task-metric", help="Your task's metric: per, cer, wer or "
                                              "accuracy (default: cer, per for phones, accuracy)."),
) -> None:
    """Fine-tune an encoder on one task with Speech-FT's stable recipe or a baseline (regular, L2-SP, LoRA,
    DoRA, early checkpoints via --save-every); writes the fine-tuned encoder as a Hugging Face folder.
    Several processes/GPUs: run it under 'accelerate launch' or 'torchrun -m speechft.cli finetune ...'."""
    with user_errors():
        from ..finetune import TrainingDiverged, finetune
        from ..tasks import user_task

        task_arg = task
        if task_manifests:
            paths = split_csv(task_manifests)
            if len(paths) != 3:
                raise ValueError(f"--task-manifests needs train,dev,test (3 paths), got {len(paths)}")
            if task_type not in ("ctc", "classify"):
                raise ValueError(f"--task-type must be ctc or classify, not {task_type!r}")
            field = target_field or ("text" if task_type == "ctc" else "label")
            task_arg = user_task(task or "user", tuple(paths), task_type, field, metric=task_metric)
        if not resume and (model is None or task_arg is None):
            raise ValueError("--model and --task (or --task-manifests) are required unless --resume")
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
