"""What the terminal shows while a run trains, with no dependency beyond the standard library.

:class:`Progress`: the epoch's bar, redrawn in place on a terminal (at most 5 times a second),
else one line at 0%, 50% and 100%: steps done, rate, the running loss and the epoch's ETA.

:class:`Forecast`: one line early in a run saying how long the whole run will take.

Neither reads a device tensor per step: the loss is read through a callable only when a line is
printed, so on an accelerator the bar costs at most 5 host syncs a second (a line per 0.2 s),
however fast the steps are.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO, Union

Clock = Callable[[], float]


def duration(seconds: float) -> str:
    """0:42, 12:05, 1:02:05: short enough for a bar, unambiguous for an ETA."""
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def rate_text(steps_per_second: float) -> str:
    """"3.2 it/s", or "2.1 s/it" when a step takes longer than a second (cnn on a busy CPU)."""
    if steps_per_second >= 1 or steps_per_second <= 0:
        return f"{steps_per_second:.1f} it/s"
    return f"{1 / steps_per_second:.2f} s/it"


class Progress:
    """The bar of one epoch.

    ``loss``: called when a line is printed (never more often), returns the loss to show (a
    number, or text for several models), e.g. the epoch's mean training loss so far from a
    tensor the loop accumulates on the device.
    ``clock``: where time comes from (tests pass a fake one).
    """

    MIN_INTERVAL = 0.2  # seconds between redraws on a terminal

    def __init__(self, total: int, label: str, stream: Optional[TextIO] = None,
                 loss: Optional[Callable[[], Union[float, str]]] = None, clock: Clock = time.monotonic) -> None:
        self.total, self.label, self.done = max(total, 1), label, 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.loss, self.clock = loss, clock
        self.start = self._last = clock()
        self._last_half = -1
        self.postfix = ""

    def update(self, n: int = 1, postfix: str = "") -> None:
        self.done += n
        if postfix:
            self.postfix = postfix
        now = self.clock()
        if self.tty:
            if now - self._last >= self.MIN_INTERVAL or self.done >= self.total:
                self._last = now
                self.stream.write("\r" + self._line(now) + "\x1b[K")  # clear what a longer line left
                self.stream.flush()
        else:  # a log file: the first step, half way, the end
            half = 2 * self.done // self.total
            if half != self._last_half:
                self._last_half = half
                self.stream.write(self._line(now) + "\n")
                self.stream.flush()

    def _line(self, now: float) -> str:
        frac = min(self.done / self.total, 1.0)
        bar = "#" * int(24 * frac)
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        parts = [f"{self.label} [{bar:<24}] {self.done}/{self.total}", rate_text(rate)]
        if self.loss is not None:
            value = self.loss()
            parts.append(f"loss {value if isinstance(value, str) else format(value, '.4f')}")
        if self.done >= self.total:
            parts.append(f"took {duration(elapsed)}")
        else:
            parts.append(f"eta {duration((self.total - self.done) / max(rate, 1e-9))}")
        if self.postfix:
            parts.append(self.postfix)
        return "  ".join(parts)

    def say(self, line: str, out: Optional[TextIO] = None) -> None:
        """Print ``line`` on ``out`` (default: the bar's stream) without breaking the bar: on a
        terminal the bar's line is cleared first and drawn again after."""
        out = out or self.stream
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
        out.write(line + "\n")
        out.flush()
        if self.tty:
            self.stream.write(self._line(self.clock()))
            self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


class Forecast:
    """Says once, after the first steps, how long the whole run will take.

    The first ``skip`` steps are not timed (the first builds caches and logs the probes), the
    next ``measure`` are; then :meth:`step` returns one line (else ""): steps left x the measured
    time a step, plus evaluation, estimated as a forward pass (a third of a training step) per
    ``batch_size`` test images per epoch. ``sync`` is called at the two timing points (an
    accelerator's queue runs ahead of the host: two syncs a run). A run that ends first (e.g.
    ``--dry-run``) gets no line.
    """

    def __init__(self, steps: int, epochs: int, batch_size: int, test_images: int, skip: int = 2,
                 measure: int = 8, note: str = "", clock: Clock = time.monotonic,
                 sync: Callable[[], None] = lambda: None) -> None:
        self.steps, self.epochs, self.batch_size, self.test_images = steps, epochs, batch_size, test_images
        self.skip, self.measure, self.note = skip, measure, note
        self.clock, self.sync = clock, sync
        self.done = 0
        self._t0: Optional[float] = None

    def step(self) -> str:
        self.done += 1
        if self.done == self.skip:
            self.sync()
            self._t0 = self.clock()
        elif self.done == self.skip + self.measure and self._t0 is not None:
            self.sync()
            per_step = (self.clock() - self._t0) / self.measure
            left = self.steps - self.done
            evaluation = per_step / 3 * self.test_images / self.batch_size * self.epochs
            return (f"time: {per_step:.2f} s a step (steps {self.skip + 1}-{self.done}) -> this run needs about "
                    f"{duration(left * per_step + evaluation)} more: {left} steps {duration(left * per_step)}, "
                    f"evaluation ~{duration(evaluation)}{' (' + self.note + ')' if self.note else ''}")
        return ""
