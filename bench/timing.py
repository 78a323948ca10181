"""Timing that holds up on a shared machine: synchronised calls, interleaved comparisons and
medians with their spread, the probes' own hook time, and ratios measured at several thread counts."""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Callable, Dict, List

import torch


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timing covers it (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call of ``fn``, its GPU work included."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(fns: Dict[str, Callable[[], object]], rounds: int, device: torch.device,
                warmup: int = 0) -> Dict[str, List[float]]:
    """Seconds of each call, running the functions in turn, the order rotated every round, so
    that load from other processes, which comes and goes, falls on every function alike.
    ``warmup`` untimed calls of each come first (the allocator, oneDNN primitives, lazy setup)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    names = list(fns)
    out: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            out[name].append(timed(fns[name], device))
    return out


def spread(values: List[float], digits: int = 4) -> Dict[str, float]:
    """A figure as results.json gives it: the median over repeats, with min, max and count."""
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "n": len(values)}


class HookClock:
    """Seconds spent in the probes' hook methods, which run on every step (DeadUnits' forward
    hooks, the sentinel's hooks and ``check_loss``) or only on logging steps.

    On a CPU hooks run synchronously, so their own time is what they add to a step, measured
    to microseconds instead of as the difference of two noisy ~0.2 s steps. (On an
    accelerator they only queue work: there the whole-step comparison is the figure.)
    Read it across the forward and backward passes: methods that ``Monitor.step`` calls
    are inside its own time.
    """

    # the probe's moments, called by the Monitor (attach, detach, step start), not hooks
    MOMENTS = ("_on_attach", "_on_arm", "_on_detach", "_on_start")

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, probe) -> None:
        """Time ``probe``'s hook methods; call before attaching (hooks bind them then)."""
        for name in dir(type(probe)):
            if (name.startswith("_on_") and name not in self.MOMENTS) or name == "check_loss":
                setattr(probe, name, self._timed(getattr(probe, name)))

    def _timed(self, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
        return timed


def thread_counts(default: int) -> List[int]:
    """The thread counts a ratio is measured at: one thread, and torch's default when that differs."""
    return sorted({1, default})


@contextmanager
def threads(n: int):
    """torch's intra-op threads set to ``n`` inside, put back after (the run keeps its chosen count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def at_thread_counts(measure: Callable[[int], Dict], counts: List[int], key: str, higher_is_better: bool) -> Dict:
    """``measure(n)`` at each thread count; the headline ``key`` is the *worse* of them (a goal
    must hold at one thread and at the default alike), with the count it came from; every count's
    own figures stay under ``by_threads``. ``measure`` returns a dict holding ``key`` as a spread,
    or with ``error`` when it could not measure."""
    by = {}
    for n in counts:
        with threads(n):
            by[str(n)] = measure(n)
    measured = {n: r for n, r in by.items() if isinstance(r.get(key), dict)}
    out: Dict = {"by_threads": by}
    if not measured:
        out[key] = None
        out["error"] = "; ".join(f"{n} thread(s): {r.get('error', 'not measured')}" for n, r in by.items())
        return out
    pick = (min if higher_is_better else max)(measured, key=lambda n: measured[n][key]["median"])
    out[key] = measured[pick][key]
    out[f"{key}_threads"] = int(pick)
    return out
