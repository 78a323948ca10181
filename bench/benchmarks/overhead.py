"""Probe overhead: cnn training steps without probes, with train.py's probes between logs, and
logging on every step (sampled and exact bucket counts)."""
from __future__ import annotations

import itertools
import time
from statistics import median
from typing import Dict, List

import torch

from ..sizes import Sizes
from ..timing import HookClock, at_thread_counts, interleaved, spread
from ..workload import DEFAULT_EVERY, fresh_cnn, probed, train_step


def probe_overhead(xs, device: torch.device, sizes: Sizes, tmp: str, log, counts: List[int]) -> Dict:
    """Each configuration trains its own cnn on batches ``xs``, in interleaved rounds; the
    ratios are taken within each repeat, from its medians. Logging on every step is measured
    again at each thread count of ``counts`` (:func:`every_step_at_thread_counts`): that is
    the headline, the worse of them."""
    batches = itertools.cycle(xs)
    clock = HookClock()  # the per-step hooks' own time in the between-logs steps
    runs = {"bare": fresh_cnn(device), "probes_between_logs": fresh_cnn(device),
            "probes_every_step": fresh_cnn(device), "probes_every_step_exact": fresh_cnn(device)}
    monitors = {
        "bare": None,
        # logs at step 0 (warm-up) and then every 10**9 steps: its timed steps are the 99 in 100
        # that do not log at the default interval
        "probes_between_logs": probed(runs["probes_between_logs"][0], f"{tmp}/between", 10**9, clock=clock),
        "probes_every_step": probed(runs["probes_every_step"][0], f"{tmp}/every", 1),
        # every element read, as a logging step at the default interval reads them (logging every
        # step reads a sample of the large tensors' blocks): the default figure's logging step
        "probes_every_step_exact": probed(runs["probes_every_step_exact"][0], f"{tmp}/exact", 1,
                                          moments_sample="exact"),
    }

    monitor_seconds: List[float] = []

    def step_of(name):
        return lambda: train_step(*runs[name], *next(batches), monitor=monitors[name])

    def between_logs():
        # the step as the others, with what the probes add timed apart: the hooks that run in
        # the forward and backward passes on every step (dead units, the non-finite sentinel;
        # the statistics probes have none between logs), and Monitor.step as a whole (with
        # whatever probe methods it calls): milliseconds that the difference of two noisy
        # ~0.2 s steps cannot resolve
        hooks_before = clock.seconds
        loss = train_step(*runs["probes_between_logs"], *next(batches), monitor=monitors["probes_between_logs"],
                          end_step=False)
        hooks = clock.seconds - hooks_before
        start = time.perf_counter()
        monitors["probes_between_logs"].step(loss)
        monitor_seconds.append(time.perf_counter() - start + hooks)

    fns = {name: step_of(name) for name in runs}
    fns["probes_between_logs"] = between_logs
    for _ in range(2):  # warm-up: allocator, oneDNN primitives, the between-logs monitor's step 0
        for fn in fns.values():
            fn()
    per_repeat: Dict[str, List[float]] = {k: [] for k in ("every", "between", "exact", "default", "default_direct")}
    medians: Dict[str, List[float]] = {name: [] for name in runs}
    monitor_medians: List[float] = []
    for _ in range(sizes.repeats):
        monitor_seconds.clear()
        times = interleaved(fns, sizes.overhead_rounds, device)
        m = {name: median(v) for name, v in times.items()}
        for name in runs:
            medians[name].append(m[name])
        monitor_medians.append(median(monitor_seconds))
        per_repeat["every"].append(m["probes_every_step"] / m["bare"])
        per_repeat["exact"].append(m["probes_every_step_exact"] / m["bare"])
        per_repeat["between"].append(m["probes_between_logs"] / m["bare"])
        # at the default interval, per 100 steps: one logging step, and 99 bare steps plus
        # probe time; and the same with the between-logs steps' measured times
        k = DEFAULT_EVERY
        logging_extra = m["probes_every_step_exact"] - m["bare"]
        per_repeat["default"].append(1 + (logging_extra + (k - 1) * monitor_medians[-1]) / (k * m["bare"]))
        per_repeat["default_direct"].append(((k - 1) * m["probes_between_logs"] + m["probes_every_step_exact"])
                                            / (k * m["bare"]))
    for monitor in monitors.values():
        if monitor is not None:
            monitor.__exit__()
    every = every_step_at_thread_counts(xs, device, sizes, tmp, log, counts)
    out = {
        "probe_overhead_default": spread(per_repeat["default"]),
        "probe_overhead_every_step": every["probe_overhead_every_step"],
        "every_step_by_threads": every,
        "every_step_in_the_four_way_run": spread(per_repeat["every"]),
        "between_logs_ratio": spread(per_repeat["between"]),
        "probe_seconds_between_logs": spread(monitor_medians, 6),
        "probe_overhead_default_from_whole_steps": spread(per_repeat["default_direct"]),
        "every_step_exact_ratio": spread(per_repeat["exact"]),
        "step_seconds": {name: spread(v) for name, v in medians.items()},
        "batch": sizes.batch,
        "method": (f"{sizes.repeats} repeats x {sizes.overhead_rounds} interleaved steps of each configuration; "
                   f"default = 1 + (logging step - bare step + 99 x probe time between logs) / (100 x bare step), "
                   f"the logging step reading every element as at the default interval, "
                   f"where the probe time between logs is Monitor.step plus the per-step hooks' own time, "
                   f"from the medians of each repeat"),
    }
    log(f"probe overhead: default {out['probe_overhead_default']['median']}x, every step "
        f"{out['every_step_in_the_four_way_run']['median']}x (every element read "
        f"{out['every_step_exact_ratio']['median']}x), between logs {out['between_logs_ratio']['median']}x")
    return out


def every_step_at_thread_counts(xs, device: torch.device, sizes: Sizes, tmp: str, log, counts: List[int]) -> Dict:
    """Bare cnn steps against steps that all log (train.py's probes, TensorBoard sink),
    interleaved, at each thread count: the goal holds at one thread and at the default alike."""

    def measure(n: int) -> Dict:
        batches = itertools.cycle(xs)
        bare, probed_run = fresh_cnn(device), fresh_cnn(device)
        monitor = probed(probed_run[0], f"{tmp}/every-{n}", 1)
        fns = {"bare": lambda: train_step(*bare, *next(batches)),
               "every_step": lambda: train_step(*probed_run, *next(batches), monitor=monitor)}
        try:
            for _ in range(2):  # warm-up: allocator, oneDNN primitives, the scratch buffers
                for fn in fns.values():
                    fn()
            ratios, steps = [], {name: [] for name in fns}
            for _ in range(sizes.repeats):
                times = interleaved(fns, sizes.overhead_rounds, device)
                m = {name: median(v) for name, v in times.items()}
                ratios.append(m["every_step"] / m["bare"])
                for name in fns:
                    steps[name].append(m[name])
        finally:
            monitor.__exit__()
        out = {"probe_overhead_every_step": spread(ratios), "step_seconds": {k: spread(v) for k, v in steps.items()}}
        log(f"every step logging at {n} thread(s): {out['probe_overhead_every_step']['median']}x the bare step "
            f"(bare {out['step_seconds']['bare']['median']} s)")
        return out

    out = at_thread_counts(measure, counts, "probe_overhead_every_step", higher_is_better=False)
    out["method"] = (f"{sizes.repeats} repeats x {sizes.overhead_rounds} interleaved steps, bare vs train.py's "
                     "probes logging every step, at each thread count; the headline is the worse count")
    return out
