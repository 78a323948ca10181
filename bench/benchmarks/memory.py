"""Memory: peak RSS of a training process with and without probes, RSS over a long probed run,
and on a GPU the peak allocated memory of a step.

Peak RSS is per process, so each CPU measurement runs in a child process of its own:
``python -m bench.benchmarks.memory`` (this module), which prints one JSON line.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import torch

from experiments.batches import batches, to_float
from experiments.mnist import load_mnist
from probes import every

from ..sizes import Sizes
from ..timing import spread
from ..workload import DEFAULT_EVERY, fresh_cnn, probed, train_step

REPO = Path(__file__).resolve().parents[2]


# -- the child process ------------------------------------------------------------------

def trace_every(growth_steps: int) -> int:
    """Steps between RSS readings of the growth run: about ten readings, at least every 50 steps."""
    return max(1, min(50, growth_steps // 10))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def memory_child(args: argparse.Namespace) -> None:
    """Train ``args.steps`` steps and report the peak RSS, then ``args.growth_steps`` more with
    an RSS trace; prints one JSON line."""
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    data = load_mnist(allow_download=False)  # held in memory, as train.py does
    model, opt = fresh_cnn(device)
    tmp = tempfile.mkdtemp(prefix="bench-mem-")
    monitor = probed(model, tmp, DEFAULT_EVERY) if args.probes else None
    gen = torch.Generator().manual_seed(0)
    every_n = trace_every(args.growth_steps)

    def run(steps: int, batch: int, trace: Optional[list] = None) -> None:
        done = 0
        while done < steps:
            for images, labels in batches(data["train"], batch, gen):
                train_step(model, opt, to_float(images), labels, monitor)
                done += 1
                if trace is not None and done % every_n == 0:
                    trace.append((done, rss_mb()))
                if done == steps:
                    return

    gc.collect()
    # Loading MNIST (gzip) peaks higher than training does; start the peak after it.
    reset = reset_peak_rss()
    before = rss_mb()
    if args.steps:
        run(args.steps, args.batch)
    peak = peak_rss_mb() if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trace: list = []
    if args.growth_steps:
        if monitor is not None:
            monitor.schedule = every(args.growth_every)
        run(args.growth_steps, args.growth_batch, trace)
    if monitor is not None:
        monitor.__exit__()
    print(json.dumps({"peak_rss_mb": round(peak, 1), "rss_before_mb": round(before, 1), "peak_after_load": reset,
                      "trace": trace}))


def child_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="one memory measurement of bench/run.py, in a process of its own")
    for name, default in (("steps", 1), ("batch", 128), ("threads", 1), ("growth-steps", 0), ("growth-batch", 16),
                          ("growth-every", 10)):
        p.add_argument(f"--{name}", type=int, default=default, help=f"default: {default}")
    p.add_argument("--probes", action="store_true", help="attach train.py's probes (default: none)")
    return p.parse_args(argv)


def run_child(probes_on: bool, steps: int, batch: int, threads: int, growth=(0, 0, 0)) -> Dict:
    """One child process's JSON line (the child runs this module); ``growth`` is (steps, batch, log every)."""
    cmd = [sys.executable, "-m", __name__, "--steps", str(steps), "--batch", str(batch), "--threads", str(threads),
           "--growth-steps", str(growth[0]), "--growth-batch", str(growth[1]), "--growth-every", str(growth[2])]
    if probes_on:
        cmd.append("--probes")
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=path)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the benchmark ----------------------------------------------------------------------

def memory(sizes: Sizes, threads: int, log) -> Dict:
    """Peak RSS of a training process with and without probes (ABAB), then RSS over a long
    probed run (smaller batches, logging every few steps, to reach many steps and logs)."""
    ratios, peaks, rises = [], {"bare": [], "probes": []}, {"bare": [], "probes": []}
    growth_run = (sizes.growth_steps, sizes.growth_batch, sizes.growth_every)
    for _ in range(sizes.peak_repeats):
        bare = run_child(False, sizes.peak_steps, sizes.batch, threads)
        probed_run = run_child(True, sizes.peak_steps, sizes.batch, threads)
        for name, child in (("bare", bare), ("probes", probed_run)):
            peaks[name].append(child["peak_rss_mb"])
            rises[name].append(child["peak_rss_mb"] - child["rss_before_mb"])
        ratios.append(probed_run["peak_rss_mb"] / bare["peak_rss_mb"])
    peak_after_load = bare["peak_after_load"]
    trace = run_child(True, 0, sizes.growth_batch, threads, growth_run)["trace"]  # a process of its own
    warm_trace = [(step, rss) for step, rss in trace if step >= min(200, sizes.growth_steps // 2)] or trace
    warm = [rss for _, rss in warm_trace]
    out = {
        "peak_rss_ratio": spread(ratios),
        "peak_rss_mb": {k: spread(v, 1) for k, v in peaks.items()},
        "peak_rise_over_start_mb": {k: spread(v, 1) for k, v in rises.items()},
        "peak_method": f"{sizes.peak_steps} steps of batch {sizes.batch} per process, probes at the default interval "
                       f"(step 0 logs), {sizes.peak_repeats} repeats bare/probes alternating; peak RSS "
                       + ("from after loading MNIST and building the model (VmHWM reset)" if peak_after_load
                          else "of the whole process (ru_maxrss, MNIST loading included)"),
        "growth_steps": sizes.growth_steps,
        "growth_method": f"{sizes.growth_steps} steps of batch {sizes.growth_batch} in a process of its own, "
                         f"probes logging every {sizes.growth_every} steps ({sizes.growth_steps // sizes.growth_every} "
                         f"logs); RSS every {trace_every(sizes.growth_steps)} steps",
        "rss_trace_mb": [(s, round(r, 1)) for s, r in trace],
        "growth_from_step": warm_trace[0][0] if warm_trace else None,
        # a least-squares line through the trace, so that the allocator's ups and downs
        # (+-10 MB) do not read as growth or shrinkage; and the band they span
        "growth_mb": round(slope(warm_trace) * (warm_trace[-1][0] - warm_trace[0][0]), 1) if len(warm) > 1 else None,
        "rss_band_mb": [round(min(warm), 1), round(max(warm), 1)] if warm else None,
    }
    log(f"memory: peak ratio {out['peak_rss_ratio']['median']}, growth over the run {out['growth_mb']} MB "
        f"(fitted line; RSS within {out['rss_band_mb']} MB)")
    return out


def slope(points: List) -> float:
    """Least-squares slope of (x, y) points."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0


def cuda_memory(xs, device: torch.device, tmp: str) -> Dict:
    """On a GPU: peak allocated memory of a training step (a logging one) with and without probes."""
    peaks = {}
    for name in ("bare", "probes"):
        model, opt = fresh_cnn(device)
        monitor = probed(model, f"{tmp}/cudamem", DEFAULT_EVERY) if name == "probes" else None
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        train_step(model, opt, *xs[0], monitor=monitor)  # step 0: a logging step
        torch.cuda.synchronize(device)
        peaks[name] = torch.cuda.max_memory_allocated(device) / 2**20
        if monitor is not None:
            monitor.__exit__()
        del model, opt
    return {"peak_allocated_mb": {k: round(v, 1) for k, v in peaks.items()},
            "peak_ratio": round(peaks["probes"] / peaks["bare"], 3)}


if __name__ == "__main__":
    memory_child(child_args())
