"""`speechft pretrain`: HuBERT-style pre-training or continued pre-training of an encoder."""
from __future__ import annotations

import sys
from typing import Optional

import typer

from ._common import check_models, device_option, user_errors


def command(
    manifest: Optional[str] = typer.Option(None, "--manifest", "-m", help="JSONL manifest(s) of unlabelled training audio; several joined by commas."),
    dev: Optional[str] = typer.Option(None, "--dev", help="Manifest of held-out audio for dev loss/accuracy."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="YAML config (e.g. configs/pretrain-tiny.yaml)."),
    init: Optional[str] = typer.Option(None, "--init", help="Continue pre-training this encoder (dir, hub id, speechft-tiny) instead of a random one."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimizer steps (overrides the config)."),
    out: str = typer.Option(..., "--out", "-o", help="Output folder (checkpoint, metrics, encoder/)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out exactly where it stopped."),
    quick: bool = typer.Option(False, "--quick", help="Tiny model, few steps, generated audio when no --manifest: a smoke test."),
    kmeans_from: Optional[str] = typer.Option(None, "--kmeans-from", help="Iteration 2: cluster a layer of this model instead of MFCCs."),
    kmeans_layer: Optional[int] = typer.Option(None, "--kmeans-layer", help="Hidden-state index for --kmeans-from (0 = CNN projection)."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Resumable checkpoint every K steps (overrides the config; also on --resume). Ctrl-C or SIGTERM also saves one before stopping."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Drop invalid manifest rows (counted in the log) instead of stopping with the list of every bad row."),
    device: str = device_option(),
) -> None:
    """Pre-train an encoder by HuBERT masked prediction of k-means targets (or continue pre-training one)."""
    from ..pretrain import pretrain

    from pathlib import Path

    with user_errors(out=Path(out), device=device):
        if device.strip().lower().startswith("cuda"):
            raise ValueError(f"--device {device}: pre-training runs on the CPU only for now; use --device cpu or auto")
        check_models([init, kmeans_from])
        summary = pretrain(manifest=manifest, out_dir=out, dev=dev, config=config, init=init, steps=steps,
                           resume=resume, quick=quick, kmeans_from=kmeans_from, kmeans_layer=kmeans_layer, skip_bad=skip_bad,
                           checkpoint_every=checkpoint_every,
                           command=" ".join(["speechft", "pretrain"] + sys.argv[2:]))
    tr = summary.get("train") or {}
    typer.echo(f"step {summary['step']}/{summary['steps']}  loss {tr.get('loss', float('nan')):.3f}  "
               f"masked acc {tr.get('acc', float('nan')):.3f}")
    if summary.get("encoder"):
        typer.echo(f"encoder: {summary['encoder']}")
