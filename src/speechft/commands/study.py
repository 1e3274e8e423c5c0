"""`speechft study`."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer

from ._common import check_models, device_option, user_errors


def command(
    out: Path = typer.Option(..., "--out", help="Output folder (report.md, models, probe records, plots); rerun to resume."),
    config: Optional[Path] = typer.Option(None, "--config", help="Study YAML (scenarios, seeds, sizes; see "
                                          "configs/study.yaml). Default: the built-in study, the same as that file."),
    quick: bool = typer.Option(False, "--quick", help="CI-sized run: quick lite data, few steps, short probes; every "
                               "section of the report is still produced."),
    fsdd: Optional[str] = typer.Option(None, "--fsdd", help="Path to the Free Spoken Digit Dataset (for fsdd-* tasks)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Processes running independent jobs at once "
                                          "(default: up to 4 on CPU, splitting the cores; 1 with a GPU)."),
    device: str = device_option(),
) -> None:
    """The paper's experiment matrix: every scenario (fine-tuning task) x method (regular FT, Stable-FT,
    Speech-FT, baselines, multitask merges) x fine-tuning seed x probe seed, with bootstrap intervals
    and a significance-aware summary in OUT/report.md."""
    from ..study import study
    from ..study_config import StudyConfig

    with user_errors(out=out, device=device):
        cfg = StudyConfig.load(config, fsdd=fsdd) if config else StudyConfig.default()
        if fsdd and not config:
            cfg = dataclasses.replace(cfg, fsdd=fsdd)
        check_models([cfg.model])
        report = study(cfg, out, quick=quick, workers=workers)
    typer.echo(f"report: {report}")
