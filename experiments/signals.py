"""SIGINT / SIGTERM during training: stop at the next step boundary, never in the middle of one.

The handler only records the signal; the training loop calls :meth:`StopOnSignal.check`
between steps and after each checkpoint, where stopping leaves nothing half-written. A
second Ctrl-C raises ``KeyboardInterrupt`` at once, for a loop that does not come back.
"""
from __future__ import annotations

import signal
import threading
from typing import Any, Dict, Optional

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
