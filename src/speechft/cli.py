"""The `speechft` command line: one thin subcommand per verb, each a single library call.

Each verb's options live in :mod:`speechft.commands.<verb>`; this file only wires them up.
"""
from __future__ import annotations

import sys

import typer

from .commands import analyze, cache, convert, finetune, merge, pretrain, prepare, probe, reproduce, study, sweep, validate

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
app.add_typer(cache.app, name="cache")

VERBOSE = ("-v", "--verbose")
_MAIN = {"logging": False}  # main() configures the console; CliRunner tests keep their own logging


@app.callback()
def _options(verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log lines: every step's "
                                         "details, with times (also accepted after the verb).")) -> None:
    from .utils.logs import quiet_transformers, setup_logging

    if _MAIN["logging"]:
        setup_logging(verbose)
    else:
        quiet_transformers(verbose)


def _hoist_verbose(args: list[str]) -> list[str]:
    """``speechft probe ... -v`` means ``speechft -v probe ...`` (-v is the one option of every verb)."""
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if a in VERBOSE or (a.startswith("-v") and set(a[1:]) == {"v"})]
    rest = [a for a in args[:end] if a not in flags]
    return flags + rest + args[end:]


def main() -> None:
    from .utils.signals import Interrupted, raise_on_signals

    raise_on_signals()  # Ctrl-C / SIGTERM: a message and exit 130 / 143; training loops save a checkpoint first
    _MAIN["logging"] = True
    try:
        app(args=_hoist_verbose(sys.argv[1:]))
    except Interrupted as e:
        sys.stderr.write(f"speechft: {e}\n")
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
