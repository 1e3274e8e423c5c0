"""Helpers shared by the CLI subcommands: turning library errors into clean exits."""
from __future__ import annotations

import contextlib
import logging

import typer

log = logging.getLogger("speechft")

# Errors that are the user's input, not a bug: print one clear line and exit 2.
USER_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, KeyError, ValueError, OSError)


@contextlib.contextmanager
def user_errors():
    try:
        yield
    except USER_ERRORS as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(2)


def split_csv(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []
