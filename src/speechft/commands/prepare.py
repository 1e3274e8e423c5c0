"""`speechft prepare` (placeholder until its issue lands)."""
from __future__ import annotations

import typer


def command() -> None:
    """Not available yet in this build."""
    typer.echo("speechft prepare: not available yet in this build", err=True)
    raise typer.Exit(2)
