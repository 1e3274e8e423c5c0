"""SIGINT / SIGTERM: training loops stop cleanly at a step boundary, everything else with a message.

* :class:`Interrupted` is what an interruption raises. It is a ``BaseException`` but not a
  ``KeyboardInterrupt``, so no ``except Exception`` swallows it and typer does not turn it into a
  silent exit 130; ``speechft.cli.main`` prints its one-line message and exits ``128 + signal``
  (130 for SIGINT, 143 for SIGTERM).
* :func:`raise_on_signals` (installed by the CLI): either signal raises :class:`Interrupted` at once.
* :class:`StopAtStep` (a training loop, armed just before its first step and disarmed when the
  ``with`` block ends): the first signal only sets :attr:`StopAtStep.signum`; the loop finishes
  its step, saves a resumable checkpoint and raises :class:`Interrupted` naming the resume
  command. A second signal stops at once without saving. Outside the main thread (where Python
  cannot install handlers) it does nothing.
"""
from __future__ import annotations

import logging
import signal
import threading
from typing import Optional

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class Interrupted(BaseException):
    """The run was stopped by SIGINT/SIGTERM; ``str()`` is the one line to show the user."""

    def __init__(self, signum: int, message: Optional[str] = None):
        super().__init__(signum, message)
        self.signum = int(signum)
        self.message = message or f"interrupted ({signal_name(signum)})"

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def __str__(self) -> str:
        return self.message


def _raise(signum, frame):
    raise Interrupted(signum)


def raise_on_signals() -> None:
    """SIGINT and SIGTERM raise :class:`Interrupted` (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, _raise)


class StopAtStep:
    """``with StopAtStep("fine-tuning") as stop: ... stop.arm(); loop: if stop.signum: save; raise stop.interrupted(...)``."""

    def __init__(self, what: str):
        self.what = what
        self.signum = 0
        self._old: dict = {}

    def _handle(self, signum, frame):
        if self.signum:  # the second one: the user does not want to wait
            raise Interrupted(signum, f"interrupted again ({signal_name(signum)}): stopped {self.what} without "
                                      "saving this step")
        self.signum = int(signum)
        log.warning("%s received: stopping %s after this step with a checkpoint (again to stop at once)",
                    signal_name(signum), self.what)

    def arm(self) -> None:
        """Defer the signals to the next step boundary (call just before the loop)."""
        if not self._old and threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._handle)

    def disarm(self) -> None:
        """The handlers there were before :meth:`arm`."""
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()

    def __enter__(self) -> "StopAtStep":
        return self

    def __exit__(self, *exc) -> None:
        self.disarm()

    def interrupted(self, message: str) -> Interrupted:
        return Interrupted(self.signum, message)
