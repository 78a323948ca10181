"""When probes measure: a schedule is a plain callable ``step -> bool``.

Kept as a callable (like cockpit's ``schedules.linear``) rather than a counter so that
users can pass any rule, e.g. ``lambda s: s < 100 or s % 1000 == 0``.
"""
from __future__ import annotations

from typing import Callable, Union

Schedule = Callable[[int], bool]


def every(interval: int, offset: int = 0) -> Schedule:
    """Return a schedule that fires at steps ``offset, offset + interval, ...``."""
    if interval < 1:
        raise ValueError(f"a logging interval must be a positive number of steps, got {interval}")

    def fires(step: int) -> bool:
        return step >= offset and (step - offset) % interval == 0

    return fires


def as_schedule(when: Union[int, Schedule]) -> Schedule:
    """Accept either an interval in steps or a ready-made schedule."""
    if callable(when):
        return when
    return every(int(when))
