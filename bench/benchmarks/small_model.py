"""Probe overhead on a small, fast step: a 784-128-10 MLP at batch 32 (~1 ms a step on a CPU).

Beside a 0.2 s cnn step whatever the probes do on every step is noise; beside a 1 ms step it
is the cost. So this times whole windows of ``DEFAULT_EVERY`` steps, each holding exactly one
logging step, the way a user's loop runs them: ``probes.watch(model, log_dir, probes="all",
optimizer=opt)`` (every probe, steps counted by the optimizer hook, the loss given with
``log_loss``, a TensorBoard sink) against the same loop without probes; and train.py's probe
set the same way, in details.
"""
from __future__ import annotations

import itertools
from statistics import median
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from probes import watch

from ..sizes import Sizes
from ..timing import at_thread_counts, interleaved, spread
from ..workload import DEFAULT_EVERY, TRAIN_PY_PROBES

KEY = "probe_overhead_small_model"
BATCH = 32


def small_mlp(device: torch.device):
    """784-128-10 ReLU MLP with Adam, seed-0 weights: (model, optimizer)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10)).to(device)
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def probe_overhead_small(xs, device: torch.device, sizes: Sizes, tmp: str, counts: List[int], log) -> Dict:
    """Windows of ``DEFAULT_EVERY`` steps on batches ``xs`` (batch 32): bare, all probes, train.py's probes."""

    def measure(n: int) -> Dict:
        runs = {"bare": small_mlp(device), "all_probes": small_mlp(device), "train_py_probes": small_mlp(device)}
        monitors = {
            "bare": None,
            "all_probes": watch(runs["all_probes"][0], f"{tmp}/small-all-{n}", every=DEFAULT_EVERY, probes="all",
                                optimizer=runs["all_probes"][1]),
            "train_py_probes": watch(runs["train_py_probes"][0], f"{tmp}/small-train-{n}", every=DEFAULT_EVERY,
                                     probes=[cls() for cls in TRAIN_PY_PROBES], optimizer=runs["train_py_probes"][1]),
        }

        def window(name):
            model, opt = runs[name]
            monitor = monitors[name]
            batches = itertools.cycle(xs)

            def run():
                for _ in range(DEFAULT_EVERY):  # one logging step in each window (steps 0, 100, ...)
                    x, y = next(batches)
                    opt.zero_grad(set_to_none=True)
                    loss = F.cross_entropy(model(x), y)
                    loss.backward()
                    if monitor is not None:
                        monitor.log_loss(loss)
                    opt.step()  # the monitor's step, through its optimizer hook
            return run

        fns = {name: window(name) for name in runs}
        ratios: Dict[str, List[float]] = {"all_probes": [], "train_py_probes": []}
        step_seconds: Dict[str, List[float]] = {name: [] for name in runs}
        try:
            for fn in fns.values():  # warm-up window: first logging step, allocator
                fn()
            for _ in range(sizes.repeats):
                times = interleaved(fns, sizes.small_rounds, device)
                m = {k: median(v) for k, v in times.items()}
                for k in runs:
                    step_seconds[k].append(m[k] / DEFAULT_EVERY)
                for k in ratios:
                    ratios[k].append(m[k] / m["bare"])
        finally:
            for monitor in monitors.values():
                if monitor is not None:
                    monitor.__exit__()
        out = {KEY: spread(ratios["all_probes"]), "train_py_probes_ratio": spread(ratios["train_py_probes"]),
               "step_seconds": {k: spread(v, 6) for k, v in step_seconds.items()}}
        log(f"small model at {n} thread(s): all probes {out[KEY]['median']}x the bare step, train.py's probes "
            f"{out['train_py_probes_ratio']['median']}x (bare step {out['step_seconds']['bare']['median'] * 1e3:.2f} ms)")
        return out

    out = at_thread_counts(measure, counts, KEY, higher_is_better=False)
    out.update(batch=BATCH, method=(
        f"784-128-10 ReLU MLP, Adam, MNIST batches of {BATCH}; {sizes.repeats} repeats x {sizes.small_rounds} "
        f"interleaved windows of {DEFAULT_EVERY} steps (each window holds one logging step, at the default "
        "interval): bare loop vs probes.watch(model, log_dir, probes='all', optimizer=opt) with log_loss, and vs "
        "train.py's probe set the same way; ratio = median window / median bare window within each repeat"))
    return out
