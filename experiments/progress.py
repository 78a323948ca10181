"""A dependency-free progress bar on stderr (redrawn in place on a terminal, else a line per 10%)."""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


class Progress:
    def __init__(self, total: int, label: str, stream: Optional[TextIO] = None) -> None:
        self.total, self.label, self.done = max(total, 1), label, 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = self._last = time.monotonic()
        self._last_decile = -1
        self.postfix = ""

    def update(self, n: int = 1, postfix: str = "") -> None:
        self.done += n
        if postfix:
            self.postfix = postfix
        now = time.monotonic()
        if self.tty and (now - self._last > 0.2 or self.done >= self.total):
            self._last = now
            self.stream.write("\r" + self._line(now))
            self.stream.flush()
        elif not self.tty:
            decile = 10 * self.done // self.total
            if decile != self._last_decile and decile % 5 == 0:
                self._last_decile = decile
                self.stream.write(self._line(now) + "\n")

    def _line(self, now: float) -> str:
        frac = self.done / self.total
        bar = "#" * int(24 * frac)
        rate = self.done / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / max(rate, 1e-9)
        return f"{self.label} [{bar:<24}] {self.done}/{self.total} {rate:5.1f} it/s eta {eta:4.0f}s {self.postfix}"

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
