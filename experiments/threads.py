"""How many CPU threads torch uses for a run, and a warning when the machine is busier than its cores.

torch starts one intra-op thread per core. When other processes already keep the cores busy,
those threads wait on each other at every parallel region, and a step gets slower, not faster:
on a 2-core machine at load average 3 to 6, ``OMP_NUM_THREADS=1`` ran the cnn 2.4x and the
deep-sigmoid MLP 8x faster than torch's default of two threads (issue 15).

The rule (:func:`choose`), applied once at the start of a run:

- ``--threads N`` given: N threads, as asked.
- ``OMP_NUM_THREADS`` set: torch already follows it; kept.
- otherwise torch's default, unless it is more threads than cores are free: then as many threads
  as cores are free, said on stderr. Free cores = cores - the 1-minute load average, rounded (a
  core counts as free when less than half of it is busy), at least 1.

A user's own choice (flag or variable) is never overridden; it only draws the same warning when
it asks for more threads than cores are free.
"""
from __future__ import annotations

import os
from typing import Mapping, NamedTuple, Optional


class Choice(NamedTuple):
    threads: int
    message: str  # "" when there is nothing to say
    load: float
    cores: int


def machine_load() -> float:
    """The 1-minute load average: processes running or waiting for a core (0 where unknown)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not on this platform
        return 0.0


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def choose(requested: Optional[int], default: int, load: Optional[float] = None, cores: Optional[int] = None,
           env: Optional[Mapping[str, str]] = None) -> Choice:
    """The thread count for a run and what to tell the user (see the module docstring).

    ``default`` is torch's own count (``torch.get_num_threads()``); ``load``, ``cores`` and
    ``env`` default to this machine's, and are arguments so that tests can pass any."""
    load = machine_load() if load is None else load
    cores = usable_cores() if cores is None else cores
    env = os.environ if env is None else env
    free = max(1, round(cores - load))  # a core counts as free when less than half of it is busy
    where = f"load average {load:.1f} on {cores} cores"
    if requested is not None or env.get("OMP_NUM_THREADS"):
        threads = requested if requested is not None else default
        how = f"--threads {threads}" if requested is not None else f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']}"
        if threads > free:
            return Choice(threads, f"train.py: warning: {how} asks for {threads} threads and the machine is "
                          f"busy ({where}): {free} free; fewer threads may well be faster", load, cores)
        return Choice(threads, "", load, cores)
    if default > free:
        return Choice(free, f"train.py: the machine is busy ({where}) and torch would start {default} threads: "
                      f"using {free} (torch.set_num_threads), since threads that wait for a core slow every "
                      f"step. Choose with --threads N, or set OMP_NUM_THREADS.", load, cores)
    return Choice(default, "", load, cores)


def describe(choice: Choice) -> str:
    """For the run's first lines: what the times it forecasts were measured under."""
    return f"{choice.threads} torch thread{'s' if choice.threads != 1 else ''}, load average " \
           f"{choice.load:.1f} on {choice.cores} cores"
