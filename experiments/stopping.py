"""Stopping training safely: on SIGINT / SIGTERM, and at the first NaN/Inf.

Never in the middle of a step: the signal handler only records the signal, and the
training loop calls a :class:`Guard` between steps (and :meth:`StopOnSignal.check` after
each checkpoint), where stopping leaves nothing half-written. A second Ctrl-C raises
``KeyboardInterrupt`` at once, for a loop that does not come back.
"""
from __future__ import annotations

import signal
import sys
import threading
from typing import Any, Dict, List, Optional

from .run import Run

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """Training stopped on a signal; ``status`` is the shell's 128 + signal number."""

    def __init__(self, signum: int, message: str = "") -> None:
        super().__init__(message or f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum
        self.status = 128 + signum


class StopOnSignal:
    """``with StopOnSignal() as stop: ... stop.check()``; restores the old handlers on exit."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._old: Dict[int, Any] = {}

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for signum in SIGNALS:
                self._old[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, old in self._old.items():
            signal.signal(signum, old)
        self._old = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # asked twice: stop now
        self.signum = self.signum or signum

    def check(self) -> None:
        """Raise :class:`Interrupted` if a signal came since training started."""
        if self.signum is not None:
            raise Interrupted(self.signum)


class NonFiniteError(Exception):
    """Training produced a NaN or Inf (found by the non-finite sentinel, ``monitor["nonfinite"]``)."""


class Guard:
    """Called between steps: stop on SIGINT/SIGTERM, and on the first NaN/Inf unless ``keep_going``
    (then warn once on stderr and train on)."""

    def __init__(self, runs: List[Run], stop: StopOnSignal, keep_going: bool) -> None:
        self.runs, self.stop, self.keep_going, self.warned = runs, stop, keep_going, False

    def __call__(self) -> None:
        self.stop.check()
        for r in self.runs:
            sentinel = r.monitor["nonfinite"]
            if sentinel.tripped and not self.warned:
                where = f"{sentinel.event.describe()}{' (variant ' + r.label + ')' if r.label else ''}"
                if not self.keep_going:
                    raise NonFiniteError(where)
                self.warned = True
                print(f"train.py: warning: {where}; --keep-going: training on", file=sys.stderr)
