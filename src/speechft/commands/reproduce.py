"""`speechft reproduce`."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ._common import check_models, device_option, user_errors


def command(
    out: Path = typer.Option(..., "--out", help="Output folder (report.md, models, probe records, plots); rerun to resume."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config (see configs/reproduce.yaml); defaults built in."),
    quick: bool = typer.Option(False, "--quick", help="CI-sized run: quick lite data, few steps, short probes, coarse sweep."),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="Probe seeds per (model, task); > 1 reports mean ± std."),
    model: Optional[str] = typer.Option(None, "--model", help="Pre-trained model reference (default: speechft-tiny)."),
    alpha: Optional[str] = typer.Option(None, "--alpha", help="Speech-FT's α: a number (default 0.25) or "
                                        "auto[:RULE[:VALUE]], chosen from the Stable-FT run (see docs/merge.md)."),
    fsdd: Optional[str] = typer.Option(None, "--fsdd", help="Path to the Free Spoken Digit Dataset (for fsdd-* tasks)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Processes running independent jobs at once "
                                          "(default: up to 4 on CPU, splitting the cores; 1 with a GPU)."),
    device: str = device_option(),
) -> None:
    """The paper's loop in one command: prepare data, stable and regular fine-tuning (+ baselines),
    Speech-FT merge, probes of every model on every task, α sweep, analyses, and OUT/report.md."""
    from ..pipeline import reproduce
    from ..pipeline_config import ReproduceConfig

    with user_errors(out=out, device=device):
        cfg = ReproduceConfig.load(config, seeds=seeds, model=model, fsdd=fsdd, alpha=alpha)
        check_models([cfg.model])
        report = reproduce(cfg, out, quick=quick, workers=workers)
    typer.echo(f"report: {report}")
