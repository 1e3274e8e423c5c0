"""Console logging for the command line: quiet by default, never glued onto a progress bar.

* Default: speechft's INFO lines (one per stage) as plain text, warnings as ``warning: ...``;
  other libraries only from WARNING. ``-v``: speechft's DEBUG lines too, other libraries' INFO,
  with times and logger names. ``SPEECHFT_LOG=LEVEL`` sets speechft's level explicitly.
* Records go through ``tqdm.write``, which clears the bars on the terminal, writes the line and
  draws the bars again, so a log line never lands in the middle of a bar.
* transformers' own progress bars ("Loading weights", "Writing model shards") are off and its
  logging shows errors only (``-v``: warnings); hub download bars are left alone.
"""
from __future__ import annotations

import logging
import os
import sys

VERBOSE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class QuietFormatter(logging.Formatter):
    """``message`` for INFO and below, ``warning: message`` / ``error: message`` above."""

    def format(self, record: logging.LogRecord) -> str:
        msg = super().format(record)
        return msg if record.levelno <= logging.INFO else f"{record.levelname.lower()}: {msg}"


class TqdmHandler(logging.StreamHandler):
    """A stream handler that writes through ``tqdm.write`` (bars cleared, line written, bars redrawn)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def setup_logging(verbose: int = 0) -> None:
    """Configure the root logger for a command-line run (replaces any handlers it had)."""
    env = os.environ.get("SPEECHFT_LOG")
    level = env.upper() if env else (logging.DEBUG if verbose else logging.INFO)
    handler = TqdmHandler(sys.stderr)
    if verbose:
        handler.setFormatter(logging.Formatter(VERBOSE_FORMAT, datefmt="%H:%M:%S"))
    else:
        handler.setFormatter(QuietFormatter("%(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    # Spawned workers (utils.jobs) take the root level: quiet by default, speechft's INFO with -v.
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    logging.getLogger("speechft").setLevel(level)
    quiet_transformers(verbose)


def quiet_transformers(verbose: int = 0) -> None:
    """transformers without its progress bars; its log at error level (warning with ``-v``)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "warning" if verbose else "error")  # spawned workers too
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - transformers is a dependency
        return
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity(logging.WARNING if verbose else logging.ERROR)
