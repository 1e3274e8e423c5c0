"""`speechft validate`."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ._common import user_errors


def command(
    manifests: List[Path] = typer.Argument(..., help="JSONL manifests to check (ids must be unique across all of them)."),
    task: Optional[str] = typer.Option(None, "--task", help="Also check each row has this task's target "
                                       "(e.g. lite-ks needs 'label'; slots tasks need every slot)."),
    min_seconds: float = typer.Option(0.1, "--min-seconds", help="Rows shorter than this many seconds are bad."),
    max_seconds: float = typer.Option(30.0, "--max-seconds", help="Rows longer than this many seconds are bad "
                                      "(0 = no upper limit)."),
    channels: Optional[int] = typer.Option(None, "--channels", help="Require exactly this many channels "
                                           "(default: any; multi-channel audio is averaged to mono on load)."),
    sample_rate: Optional[List[int]] = typer.Option(None, "--sample-rate", help="Allowed sample rate in Hz; "
                                                    "repeat for several (default: any; other rates are resampled)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Re-read every audio file instead of trusting the "
                                  "validation cache of unchanged files."),
) -> None:
    """Check manifests and their audio before a long run: one line per bad row
    (manifest:line, id, path, reason), then a summary. Exit 1 when any row is bad, 0 when all are
    good, 2 for usage errors (e.g. a manifest that does not exist)."""
    from ..data.validate import validate_manifests

    with user_errors():
        report = validate_manifests(manifests, task=task, min_seconds=min_seconds,
                                    max_seconds=max_seconds if max_seconds > 0 else None,
                                    channels=channels, sample_rates=sample_rate or None, use_cache=not no_cache)
    for line in report.format_lines():
        typer.echo(line)
    typer.echo(report.summary())
    if not report.ok:
        raise typer.Exit(1)
