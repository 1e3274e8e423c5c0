"""Helpers shared by the CLI subcommands: turning library errors into clean exits."""
from __future__ import annotations

import contextlib
import logging

import typer

from ..utils.names import UnknownNameError

log = logging.getLogger("speechft")

# Errors that are the user's input, not a bug: print one clear line and exit 2. Unknown names (tasks,
# corpora, recipes, ...) raise UnknownNameError; any other KeyError is a bug and keeps its traceback.
USER_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, UnknownNameError, ValueError, OSError)


@contextlib.contextmanager
def user_errors():
    try:
        yield
    except USER_ERRORS as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)


def split_csv(value: str | None) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()] if value else []
