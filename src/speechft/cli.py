"""The `speechft` command line: one thin subcommand per verb, each a single library call.

Each verb's options live in :mod:`speechft.commands.<verb>`; this file only wires them up.
"""
from __future__ import annotations

import logging
import os

import typer

from .commands import analyze, convert, finetune, merge, pretrain, prepare, probe, reproduce, study, sweep, validate

app = typer.Typer(
    name="speechft",
    help="Speech-FT: stable fine-tuning, weight-space merging and SUPERB-style probing of speech encoders.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for verb, module in [
    ("prepare", prepare),
    ("validate", validate),
    ("convert", convert),
    ("pretrain", pretrain),
    ("finetune", finetune),
    ("merge", merge),
    ("sweep", sweep),
    ("probe", probe),
    ("analyze", analyze),
    ("reproduce", reproduce),
    ("study", study),
]:
    app.command(verb, help=module.command.__doc__)(module.command)


def main() -> None:
    logging.basicConfig(
        level=os.environ.get("SPEECHFT_LOG", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    app()


if __name__ == "__main__":
    main()
