"""Benchmark: probe overhead, pair scan and training throughput, as ratios from one run.

    python bench/run.py            # full: ~10 minutes on 2 cores
    python bench/run.py --quick    # under 3 minutes on 2 cores
    python bench/run.py --smoke    # seconds: only checks that everything runs

Writes ``results.json`` and ``RESULTS.md`` next to this file (``--out`` elsewhere) and
prints a table. Every figure is a median over repeats with its spread (min-max). The
things compared run interleaved (A B A B ..., order rotated each round) and each ratio is
taken within one repeat, so that load from other processes, which comes and goes, falls
on both sides. Runs on the CPU, and also on CUDA when a GPU is present.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import models  # noqa: E402
from experiments.batches import batches, to_float  # noqa: E402
from experiments.mnist import load_mnist  # noqa: E402
from models.losses import keras2_crossentropy  # noqa: E402
from models.optimizers import build_optimizer  # noqa: E402
from probes import (ActivationStats, DeadUnits, GradientStats, MemorySink, Monitor, NonFiniteSentinel,  # noqa: E402
                    every, pair_scan, watch)
from probes.pair_scan import inference_mode_of, output_gradients, per_pair_layer_norms  # noqa: E402

LOSS = keras2_crossentropy  # the cnn's recipe: Keras 2 categorical cross-entropy
DEFAULT_EVERY = 100  # train.py's --log-every default
# ratio -> (comparison, goal) from the issue; None: reported without a goal
GOALS = {
    "probe_overhead_default": ("<=", 1.02),
    "probe_overhead_every_step": ("<=", 1.3),
    "peak_rss_ratio": ("<=", 1.10),
    "pair_flags_speedup_vs_loop": (">=", 50.0),
    "pair_norms_vs_batched": ("<=", 1.5),
    "train_vs_bare_loop": (">=", 0.97),
    "train_gflops_fraction_of_matmul": (None, None),
}


@dataclass
class Sizes:
    batch: int  # training batch (the cnn recipe's 128)
    overhead_rounds: int  # interleaved training steps per configuration and repeat
    repeats: int  # repeats of every timed comparison
    peak_steps: int  # steps per memory child process
    peak_repeats: int
    growth_steps: int  # steps of the memory-growth run
    growth_batch: int
    growth_every: int
    flag_images: int  # pair scan flags: images x 10 targets
    loop_pairs: int  # pairs timed one at a time (extrapolated)
    norm_images: int  # pair scan norms: images x 10 targets
    scan_repeats: int
    train_window: int  # training steps per interleaved window
    train_repeats: int
    config_rounds: int  # steps per configuration when trying threads / channels_last / compile
    compile: bool
    baseline_batches: tuple = (128, 1000)  # pairs per batch tried for the batched baseline (b)


SIZES = {
    "smoke": Sizes(16, 2, 2, 2, 1, 12, 8, 4, 20, 4, 3, 2, 2, 2, 2, False, (128,)),
    "quick": Sizes(128, 4, 3, 3, 2, 150, 16, 10, 1000, 40, 60, 3, 4, 6, 4, False, (128,)),
    "full": Sizes(128, 10, 5, 20, 3, 2000, 16, 10, 1000, 150, 1000, 3, 15, 12, 8, True),
}


# -- measuring ---------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(fns: Dict[str, Callable[[], object]], rounds: int, device: torch.device) -> Dict[str, List[float]]:
    """Seconds of each call, running the functions in turn, the order rotated every round."""
    names = list(fns)
    out: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            out[name].append(timed(fns[name], device))
    return out


def spread(values: List[float], digits: int = 4) -> Dict[str, float]:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits), "n": len(values)}


def med(values: List[float]) -> float:
    return statistics.median(values)


# -- the model, data and loops -----------------------------------------------------------

def fresh_cnn(device: torch.device, channels_last: bool = False):
    torch.manual_seed(0)
    model = models.build("cnn").to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    recipe = models.RECIPES["cnn"]
    return model, build_optimizer(recipe.optimizer, model.parameters(), recipe.lr)


def train_step(model, optimizer, x, y, monitor: Optional[Monitor] = None, end_step: bool = True):
    """One step as train.py takes it (minus data loading): zero_grad, forward, loss, backward, step;
    ``end_step=False`` leaves ``monitor.step`` to the caller (to time it apart)."""
    optimizer.zero_grad(set_to_none=True)
    logits = model(x)
    loss = LOSS(logits, F.one_hot(y, 10).to(logits.dtype)).mean()
    sentinel = monitor.get("nonfinite") if monitor is not None else None
    if sentinel is not None:  # as train.py does: the loss checked before backward
        sentinel.check_loss(loss)
    loss.backward()
    optimizer.step()
    if monitor is not None and end_step:
        monitor.step(loss)
    return loss


class HookClock:
    """Seconds spent in the probes' hook methods, which run on every step (DeadUnits' forward
    hooks, the sentinel's hooks and ``check_loss``) or only on logging steps.

    On a CPU hooks run synchronously, so their own time is what they add to a step, measured
    to microseconds instead of as the difference of two noisy ~0.2 s steps. (On an
    accelerator they only queue work: there the whole-step comparison is the figure.)
    """

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, probe) -> None:
        """Time ``probe``'s hook methods; call before attaching (hooks bind them then)."""
        for name in dir(type(probe)):
            if (name.startswith("_on_") and name not in ("_on_attach", "_on_arm", "_on_detach")) or name == "check_loss":
                setattr(probe, name, self._timed(getattr(probe, name)))

    def _timed(self, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
        return timed


def probed(model, log_dir: str, log_every: int, hist_sample="default", clock: Optional[HookClock] = None) -> Monitor:
    """train.py's probes (experiments/study.py make_run: activations, gradients, dead units and
    the non-finite sentinel, which reads the loss's and the gradients' finiteness to the host
    every step by design) with a TensorBoard sink; ``with`` it, or ``__exit__`` to detach and close."""
    kw = {} if hist_sample == "default" else {"hist_sample": hist_sample}
    probes = [ActivationStats(**kw), GradientStats(**kw), DeadUnits(), NonFiniteSentinel()]
    if clock is not None:
        for probe in probes:
            clock.wrap(probe)
    return watch(model, log_dir, every=log_every, probes=probes)  # closes its sink on exit


def fixed_batches(split, batch: int, count: int, device: torch.device):
    gen = torch.Generator().manual_seed(1)
    out = []
    for images, labels in batches(split, batch, gen):
        out.append((to_float(images).to(device), labels.to(device)))
        if len(out) == count:
            return out
    return out


class Cycle:
    def __init__(self, items) -> None:
        self.items, self.i = items, 0

    def next(self):
        item = self.items[self.i % len(self.items)]
        self.i += 1
        return item


# -- 0. thread settings, channels_last, torch.compile ------------------------------------

def configurations(data, device: torch.device, sizes: Sizes, log) -> Dict:
    """Try what might speed up a bare cnn training step; keep the fastest correct setting."""
    out: Dict = {}
    default_threads = torch.get_num_threads()
    xs = fixed_batches(data["train"], sizes.batch, 4, device)
    if device.type == "cpu" and default_threads > 1:
        model, opt = fresh_cnn(device)
        cyc = Cycle(xs)

        def with_threads(n):
            def run():
                torch.set_num_threads(n)
                train_step(model, opt, *cyc.next())
            return run

        fns = {f"threads={default_threads}": with_threads(default_threads), "threads=1": with_threads(1)}
        for fn in fns.values():
            fn()
        times = interleaved(fns, sizes.config_rounds, device)
        best = min(times, key=lambda k: med(times[k]))
        torch.set_num_threads(int(best.split("=")[1]))
        out["threads"] = {k: spread(v) for k, v in times.items()}
        out["threads_chosen"] = torch.get_num_threads()
        log(f"threads: {', '.join(f'{k} {med(v):.3f}s' for k, v in times.items())} -> {best}")
    else:
        out["threads_chosen"] = default_threads

    # channels_last: same weights, same batch; the losses must agree
    (m1, o1), (m2, o2) = fresh_cnn(device), fresh_cnn(device, channels_last=True)
    xl = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in xs]
    with torch.no_grad(), inference_mode_of(m1), inference_mode_of(m2):
        agree = torch.allclose(m1(xs[0][0]), m2(xl[0][0]), rtol=1e-4, atol=1e-5)
    c1, c2 = Cycle(xs), Cycle(xl)
    fns = {"contiguous": lambda: train_step(m1, o1, *c1.next()), "channels_last": lambda: train_step(m2, o2, *c2.next())}
    for fn in fns.values():
        fn()
    times = interleaved(fns, sizes.config_rounds, device)
    out["channels_last"] = {**{k: spread(v) for k, v in times.items()}, "outputs_agree": bool(agree),
                            "speedup": round(med(times["contiguous"]) / med(times["channels_last"]), 3)}
    log(f"channels_last: {out['channels_last']['speedup']}x the contiguous step, outputs agree: {agree}")

    if sizes.compile:
        out["compile"] = try_compile(xs, device, sizes, log)
    return out


def try_compile(xs, device: torch.device, sizes: Sizes, log) -> Dict:
    """torch.compile of the bare model; and of a model with train.py's probes attached before
    compiling, the compiled module running the steps between logs (logging steps eagerly)."""
    (m1, o1), (m2, o2) = fresh_cnn(device), fresh_cnn(device)
    try:
        compiled = torch.compile(m2)
        start = time.perf_counter()
        with torch.no_grad(), inference_mode_of(m1), inference_mode_of(m2):
            agree = torch.allclose(m1(xs[0][0]), compiled(xs[0][0]), rtol=1e-4, atol=1e-5)
        train_step(compiled, o2, *xs[0])
        compile_s = time.perf_counter() - start
    except Exception as exc:  # no compiler, unsupported platform...
        log(f"torch.compile failed: {type(exc).__name__}: {exc}")
        return {"works": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    c1, c2 = Cycle(xs), Cycle(xs)
    fns = {"eager": lambda: train_step(m1, o1, *c1.next()), "compiled": lambda: train_step(compiled, o2, *c2.next())}
    fns["eager"]()
    times = interleaved(fns, sizes.config_rounds, device)
    out = {"works": True, "outputs_agree": bool(agree), "compile_seconds": round(compile_s, 1),
           **{k: spread(v) for k, v in times.items()},
           "speedup": round(med(times["eager"]) / med(times["compiled"]), 3)}
    # with train.py's probes attached first (as train.py would have to: hooks added after
    # compiling are not guaranteed to run in the compiled graph): logging steps run the eager
    # module, the steps between logs the compiled one, which traces the per-step hooks
    from torch._dynamo.utils import counters

    with tempfile.TemporaryDirectory() as tmp:
        m3, o3 = fresh_cnn(device)
        monitor = probed(m3, tmp, 10**9)
        train_step(m3, o3, *xs[0], monitor=monitor)  # step 0 logs, eagerly
        # as in a fresh process (train.py): Dynamo does not guard on hooks by default
        # (skip_nnmodule_hook_guards), so the bare model's cached graph would be reused and
        # silently run without them
        torch._dynamo.reset()
        graphs = counters["stats"]["unique_graphs"]
        compiled3 = torch.compile(m3)
        c3 = Cycle(xs)
        start = time.perf_counter()
        try:
            for _ in range(3):
                train_step(compiled3, o3, *c3.next(), monitor=monitor)
            fns = {"eager": fns["eager"], "compiled": lambda: train_step(compiled3, o3, *c3.next(), monitor=monitor)}
            seen = sum(monitor["dead_units"].examples.values())
            times = interleaved(fns, sizes.config_rounds, device)
            counted = sum(monitor["dead_units"].examples.values()) - seen
            out["with_probes_between_logs"] = {
                "speedup": round(med(times["eager"]) / med(times["compiled"]), 3),
                "recompiled_graphs": counters["stats"]["unique_graphs"] - graphs,
                "warmup_seconds": round(time.perf_counter() - start, 1),
                # did the compiled steps run the dead-units hooks? (every ReLU x batch per step)
                "hooks_ran": counted == len(monitor["dead_units"].seen_nonzero) * len(xs[0][0]) * len(times["compiled"]),
            }
        except Exception as exc:
            out["with_probes_between_logs"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        monitor.__exit__()
    log(f"torch.compile: {out['speedup']}x the eager step after {compile_s:.0f}s of compiling; "
        f"with probes between logs {out['with_probes_between_logs']}")
    return out


# -- 1. probe overhead -------------------------------------------------------------------

def probe_overhead(data, device: torch.device, sizes: Sizes, tmp: str, log) -> Dict:
    """cnn training steps without probes, with train.py's probes between logs, and logging
    on every step (sampled and exact bucket counts)."""
    xs = Cycle(fixed_batches(data["train"], sizes.batch, 8, device))
    clock = HookClock()  # the per-step hooks' own time in the between-logs steps
    runs = {"bare": fresh_cnn(device), "probes_between_logs": fresh_cnn(device),
            "probes_every_step": fresh_cnn(device), "probes_every_step_exact_hist": fresh_cnn(device)}
    monitors = {
        "bare": None,
        # logs at step 0 (warm-up) and then every 10**9 steps: its timed steps are the 99 in 100
        # that do not log at the default interval
        "probes_between_logs": probed(runs["probes_between_logs"][0], f"{tmp}/between", 10**9, clock=clock),
        "probes_every_step": probed(runs["probes_every_step"][0], f"{tmp}/every", 1),
        "probes_every_step_exact_hist": probed(runs["probes_every_step_exact_hist"][0], f"{tmp}/exact", 1, None),
    }

    monitor_seconds: List[float] = []

    def step_of(name):
        return lambda: train_step(*runs[name], *xs.next(), monitor=monitors[name])

    def between_logs():
        # the step as the others, with what the probes add timed apart: Monitor.step, and the
        # hooks that run on every step (dead units, the non-finite sentinel; the statistics
        # probes have none between logs): milliseconds that the difference of two noisy
        # ~0.2 s steps cannot resolve
        hooks_before = clock.seconds
        loss = train_step(*runs["probes_between_logs"], *xs.next(), monitor=monitors["probes_between_logs"],
                          end_step=False)
        start = time.perf_counter()
        monitors["probes_between_logs"].step(loss)
        monitor_seconds.append(time.perf_counter() - start + clock.seconds - hooks_before)

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
        m = {name: med(v) for name, v in times.items()}
        for name in runs:
            medians[name].append(m[name])
        monitor_medians.append(med(monitor_seconds))
        per_repeat["every"].append(m["probes_every_step"] / m["bare"])
        per_repeat["exact"].append(m["probes_every_step_exact_hist"] / m["bare"])
        per_repeat["between"].append(m["probes_between_logs"] / m["bare"])
        # at the default interval, per 100 steps: one logging step, and 99 bare steps plus
        # probe time; and the same with the between-logs steps' measured times
        k = DEFAULT_EVERY
        logging_extra = m["probes_every_step"] - m["bare"]
        per_repeat["default"].append(1 + (logging_extra + (k - 1) * monitor_medians[-1]) / (k * m["bare"]))
        per_repeat["default_direct"].append(((k - 1) * m["probes_between_logs"] + m["probes_every_step"])
                                            / (k * m["bare"]))
    for monitor in monitors.values():
        if monitor is not None:
            monitor.__exit__()
    out = {
        "probe_overhead_default": spread(per_repeat["default"]),
        "probe_overhead_every_step": spread(per_repeat["every"]),
        "between_logs_ratio": spread(per_repeat["between"]),
        "probe_seconds_between_logs": spread(monitor_medians, 6),
        "probe_overhead_default_from_whole_steps": spread(per_repeat["default_direct"]),
        "every_step_exact_hist_ratio": spread(per_repeat["exact"]),
        "step_seconds": {name: spread(v) for name, v in medians.items()},
        "batch": sizes.batch,
        "method": (f"{sizes.repeats} repeats x {sizes.overhead_rounds} interleaved steps of each configuration; "
                   f"default = 1 + (logging step - bare step + 99 x probe time between logs) / (100 x bare step), "
                   f"where the probe time between logs is Monitor.step plus the per-step hooks' own time, "
                   f"from the medians of each repeat"),
    }
    log(f"probe overhead: default {out['probe_overhead_default']['median']}x, every step "
        f"{out['probe_overhead_every_step']['median']}x (exact histograms {out['every_step_exact_hist_ratio']['median']}x), "
        f"between logs {out['between_logs_ratio']['median']}x")
    return out


# -- 2. memory: peak RSS per process and growth ------------------------------------------

def memory_child(args) -> None:
    """Runs in its own process (peak RSS is per process) and prints one JSON line."""
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    data = load_mnist(allow_download=False)  # held in memory, as train.py does
    model, opt = fresh_cnn(device)
    tmp = tempfile.mkdtemp(prefix="bench-mem-")
    monitor = probed(model, tmp, DEFAULT_EVERY) if args.probes else None
    gen = torch.Generator().manual_seed(0)

    def run(steps: int, batch: int, trace: Optional[list] = None) -> None:
        done = 0
        while done < steps:
            for images, labels in batches(data["train"], batch, gen):
                train_step(model, opt, to_float(images), labels, monitor)
                done += 1
                if trace is not None and done % trace_every == 0:
                    trace.append((done, rss_mb()))
                if done == steps:
                    return

    trace_every = max(1, min(50, args.growth_steps // 10))
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


def run_child(probes_on: bool, steps: int, batch: int, threads: int, growth=(0, 0, 0)) -> Dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", "--steps", str(steps), "--batch", str(batch),
           "--threads", str(threads), "--growth-steps", str(growth[0]), "--growth-batch", str(growth[1]),
           "--growth-every", str(growth[2])] + (["--probes"] if probes_on else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
                         f"logs); RSS every {max(1, min(50, sizes.growth_steps // 10))} steps",
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


def cuda_memory(data, device: torch.device, sizes: Sizes, tmp: str) -> Dict:
    """On a GPU: peak allocated memory of training steps with and without probes."""
    xs = fixed_batches(data["train"], sizes.batch, 2, device)
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


# -- 3. pair scan ------------------------------------------------------------------------

def pair_scans(model, data, device: torch.device, sizes: Sizes, log) -> Dict:
    """Flags and norms on test images x 10 targets against the question's one-pair-at-a-time
    loop (sampled, extrapolated) and one ordinary batched forward+backward over the pairs."""
    x_all = to_float(data["test"].images[: max(sizes.flag_images, sizes.norm_images)]).to(device)
    eye = torch.eye(10, device=device)
    params = [p for p in model.parameters() if p.requires_grad]

    def loop_sample():  # the question's get_weight_grad, one pair at a time (inference mode)
        with inference_mode_of(model):
            for k in range(sizes.loop_pairs):
                i, c = divmod(k, 10)
                model.zero_grad(set_to_none=True)
                LOSS(model(x_all[i:i + 1]), eye[c:c + 1]).sum().backward()
                all(bool((p.grad == 0).all()) for p in params)
        model.zero_grad(set_to_none=True)

    x_flags = x_all[: sizes.flag_images]
    fns = {"loop_sample": loop_sample, "flags": lambda: pair_scan(model, x_flags, LOSS)}
    for fn in fns.values():
        fn()
    times = interleaved(fns, sizes.scan_repeats, device)
    pairs_flags = 10 * sizes.flag_images
    loop_per_pair = [t / sizes.loop_pairs for t in times["loop_sample"]]
    speedups = [lp * pairs_flags / f for lp, f in zip(loop_per_pair, times["flags"])]

    x_norms = x_all[: sizes.norm_images]
    pairs_norms = 10 * sizes.norm_images
    x_pairs = x_norms.repeat_interleave(10, 0)
    y_pairs = eye.repeat(sizes.norm_images, 1)

    def batched(chunk):  # (b): an ordinary batched forward+backward over the same pairs
        def run():
            with inference_mode_of(model):
                model.zero_grad(set_to_none=True)
                for start in range(0, pairs_norms, chunk):
                    LOSS(model(x_pairs[start:start + chunk]), y_pairs[start:start + chunk]).sum().backward()
            model.zero_grad(set_to_none=True)
        return run

    result = {}

    def norms():
        result["scan"] = pair_scan(model, x_norms, LOSS, norms_for=sizes.norm_images)

    # (b) in batches of 128 pairs (the training batch) and, in the full run, of 1,000 too
    # (10,000 at once would hold ~10 GB of activations); the fastest is the baseline
    fns = {**{f"batched_{b}": batched(b) for b in sizes.baseline_batches}, "norms": norms}
    for fn in fns.values():
        fn()
    times_n = interleaved(fns, sizes.scan_repeats, device)
    times_n["batched"] = [min(ts) for ts in zip(*(times_n[f"batched_{b}"] for b in sizes.baseline_batches))]
    ratios = [n / b for n, b in zip(times_n["norms"], times_n["batched"])]

    # correctness and the previous implementation, on a few images: torch.func per pair
    few = x_norms[:2]
    with inference_mode_of(model):
        g = output_gradients(model(few).detach(), LOSS, 10)
        start = time.perf_counter()
        func_norms, _ = per_pair_layer_norms(model, few, g)
        func_per_pair = (time.perf_counter() - start) / 20
    scan = result["scan"]
    worst = max(float(((scan.layer_norms[k][:2] - v).abs() / v.abs().clamp_min(1e-30)).max()) for k, v in func_norms.items())
    out = {
        "pair_flags_speedup_vs_loop": spread(speedups, 1),
        "pair_norms_vs_batched": spread(ratios),
        "loop_seconds_per_pair": spread(loop_per_pair, 5),
        "loop_extrapolated_seconds_10000_pairs": round(med(loop_per_pair) * 10_000, 1),
        "flags_seconds": spread(times["flags"]),
        "flags_pairs": pairs_flags,
        "norms_seconds": spread(times_n["norms"]),
        "batched_seconds": spread(times_n["batched"]),
        "batched_seconds_by_batch": {str(b): spread(times_n[f"batched_{b}"]) for b in sizes.baseline_batches},
        "norms_pairs": pairs_norms,
        "norms_method": scan.norms_method,
        "norms_seconds_per_pair": round(med(times_n["norms"]) / pairs_norms, 6),
        "torch_func_seconds_per_pair": round(func_per_pair, 6),
        "norms_max_relative_difference_vs_torch_func": worst,
        "flags_all_zero_fraction": round(float(scan.all_zero.float().mean()), 4),
        "method": (f"flags: pair_scan over {sizes.flag_images} test images x 10 targets vs the one-pair loop timed on "
                   f"{sizes.loop_pairs} pairs and extrapolated to {pairs_flags}; norms: pair_scan with norms_for="
                   f"{sizes.norm_images} vs a batched forward+backward over the same {pairs_norms} pairs in batches of "
                   f"{' or '.join(map(str, sizes.baseline_batches))} pairs (the fastest in each repeat); "
                   f"{sizes.scan_repeats} interleaved repeats each"),
    }
    log(f"pair scan: flags {out['pair_flags_speedup_vs_loop']['median']}x faster than the loop; norms "
        f"{out['pair_norms_vs_batched']['median']}x the batched forward+backward")
    return out


# -- 4. training throughput and GFLOP/s --------------------------------------------------

def throughput(data, device: torch.device, sizes: Sizes, tmp: str, log) -> Dict:
    """train.py's own epoch loop (its batching, to_float, probes at the default interval,
    TensorBoard) against a minimal loop over the same tensors, in interleaved windows."""
    from train import train_epoch  # train.py's loop itself, not a copy

    split = data["train"]
    model_t, opt_t = fresh_cnn(device)
    monitor = probed(model_t, f"{tmp}/train", DEFAULT_EVERY)
    gen_t = torch.Generator().manual_seed(0)
    model_b, opt_b = fresh_cnn(device)
    images = to_float(split.images).to(device)  # converted once: the bare loop only indexes
    labels = split.labels.to(device)
    gen_b = torch.Generator().manual_seed(0)
    order = {"perm": torch.randperm(len(split), generator=gen_b), "at": 0}

    from experiments.study import Run
    from experiments.tasks import TASKS

    run = Run("", model_t, opt_t, monitor, monitor.sink, MemorySink())

    def train_py():
        with contextlib.redirect_stderr(io.StringIO()):  # its progress bar
            train_epoch([run], TASKS["classify"], LOSS, split, sizes.batch, gen_t, device, sizes.train_window, "bench")

    def bare():
        for _ in range(sizes.train_window):
            if order["at"] + sizes.batch > len(split):
                order["perm"], order["at"] = torch.randperm(len(split), generator=gen_b), 0
            idx = order["perm"][order["at"]:order["at"] + sizes.batch].to(device)
            order["at"] += sizes.batch
            train_step(model_b, opt_b, images[idx], labels[idx])

    fns = {"train_py": train_py, "bare_loop": bare}
    for fn in fns.values():
        fn()
    first = monitor.global_step
    times = interleaved(fns, sizes.train_repeats, device)
    logged = sum(1 for step in range(first, monitor.global_step) if monitor.schedule(step))
    monitor.__exit__()
    images_per_window = sizes.train_window * sizes.batch
    ips = {k: [images_per_window / t for t in v] for k, v in times.items()}
    ratios = [t / b for t, b in zip(ips["train_py"], ips["bare_loop"])]

    from torch.utils.flop_counter import FlopCounterMode

    model_f, opt_f = fresh_cnn(device)
    x, y = fixed_batches(split, sizes.batch, 1, device)[0]
    with FlopCounterMode(display=False) as counter:
        train_step(model_f, opt_f, x, y)
    flops_per_image = counter.get_total_flops() / sizes.batch
    train_gflops = [flops_per_image * v / 1e9 for v in ips["train_py"]]
    n = 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    mm_times = [timed(lambda: torch.mm(a, b), device) for _ in range(max(3, sizes.repeats))]
    mm_gflops = [2 * n**3 / t / 1e9 for t in mm_times]
    fractions = [g / med(mm_gflops) for g in train_gflops]
    out = {
        "train_vs_bare_loop": spread(ratios),
        "images_per_second": {k: spread(v, 1) for k, v in ips.items()},
        "train_gflops_fraction_of_matmul": spread(fractions),
        "train_gflops": spread(train_gflops, 2),
        "matmul_gflops": spread(mm_gflops, 2),
        "flops_per_image_fwd_bwd": int(flops_per_image),
        "logging_steps_measured": logged,
        "method": (f"{sizes.train_repeats} interleaved windows of {sizes.train_window} steps (batch {sizes.batch}): "
                   f"train.train_epoch with probes every {DEFAULT_EVERY} steps and a TensorBoard sink ({logged} of its "
                   f"{sizes.train_repeats * sizes.train_window} timed steps logged) vs a bare loop over pre-converted "
                   f"tensors; GFLOP/s = FlopCounterMode's conv/matmul FLOPs x images/s of train.py's loop, vs a "
                   f"{n}x{n} float32 matmul"),
    }
    log(f"throughput: train.py {out['train_vs_bare_loop']['median']}x the bare loop; "
        f"{out['train_gflops']['median']} GFLOP/s vs matmul {out['matmul_gflops']['median']} GFLOP/s")
    return out


# -- report ------------------------------------------------------------------------------

def machine() -> Dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu"] = names[0] if names else platform.processor()
        with open("/proc/meminfo") as f:
            info["memory_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        info["cpu"] = platform.processor()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def headline(details: Dict):
    """The fixed ratios from the CPU run: (key -> median, key -> spread)."""
    cpu = details["cpu"]
    pick = {
        "probe_overhead_default": cpu["probe_overhead"]["probe_overhead_default"],
        "probe_overhead_every_step": cpu["probe_overhead"]["probe_overhead_every_step"],
        "peak_rss_ratio": cpu["memory"]["peak_rss_ratio"],
        "pair_flags_speedup_vs_loop": cpu["pair_scan"]["pair_flags_speedup_vs_loop"],
        "pair_norms_vs_batched": cpu["pair_scan"]["pair_norms_vs_batched"],
        "train_vs_bare_loop": cpu["throughput"]["train_vs_bare_loop"],
        "train_gflops_fraction_of_matmul": cpu["throughput"]["train_gflops_fraction_of_matmul"],
    }
    return {k: v["median"] for k, v in pick.items()}, pick


def goal_met(key: str, value: float) -> Optional[bool]:
    op, goal = GOALS[key]
    if op is None:
        return None
    return value <= goal if op == "<=" else value >= goal


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer repeats and pairs: under 3 minutes on 2 cores")
    mode.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks that the benchmark runs")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent),
                   help="folder for results.json and RESULTS.md (default: bench/)")
    p.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    for name, default in (("steps", 1), ("batch", 128), ("threads", 1), ("growth-steps", 0), ("growth-batch", 16),
                          ("growth-every", 10)):
        p.add_argument(f"--{name}", type=int, default=default, help=argparse.SUPPRESS)
    p.add_argument("--probes", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.memory_child:
        memory_child(args)
        return 0

    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    sizes = SIZES[mode_name]
    started = time.time()
    load_start = os.getloadavg()
    threads_default = torch.get_num_threads()

    def log(msg: str) -> None:
        print(f"[{time.time() - started:6.1f}s] {msg}", flush=True)

    data = load_mnist(allow_download=False)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    details: Dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for device in devices:
            log(f"== {device} ==")
            d: Dict = {}
            d["configurations"] = configurations(data, device, sizes, log)
            d["probe_overhead"] = probe_overhead(data, device, sizes, tmp, log)
            if device.type == "cpu":
                d["memory"] = memory(sizes, torch.get_num_threads(), log)
            else:
                d["memory"] = cuda_memory(data, device, sizes, tmp)
            model, opt = fresh_cnn(device)  # a briefly trained cnn for the scan
            for x, y in fixed_batches(data["train"], sizes.batch, 3, device):
                train_step(model, opt, x, y)
            d["pair_scan"] = pair_scans(model, data, device, sizes, log)
            d["throughput"] = throughput(data, device, sizes, tmp, log)
            details[device.type] = d
    values, picked = headline(details)
    results = {
        **values,
        "goals": {k: {"goal": f"{op} {g}" if op else None, "met": goal_met(k, v)} for k, v in values.items()
                  for op, g in [GOALS[k]]},
        "mode": mode_name,
        "sizes": asdict(sizes),
        "machine": machine(),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "threads_default": threads_default,
        "load_average_start_end": [round(load_start[0], 2), round(os.getloadavg()[0], 2)],
        "seconds": round(time.time() - started, 1),
        "spread": picked,
        "details": details,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    from results_report import write_report  # bench/results_report.py (not the top-level report.py)

    (out / "RESULTS.md").write_text(write_report(results))
    print(table(results))
    print(f"written: {out / 'results.json'}, {out / 'RESULTS.md'} ({results['seconds']}s)")
    return 0


def table(results: Dict) -> str:
    rows = [f"{'ratio':34} {'median':>9} {'min':>9} {'max':>9}  goal      met"]
    for key in GOALS:
        s = results["spread"][key]
        g = results["goals"][key]
        met = "-" if g["met"] is None else ("yes" if g["met"] else "NO")
        rows.append(f"{key:34} {s['median']:9.3f} {s['min']:9.3f} {s['max']:9.3f}  {g['goal'] or '':9} {met}")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
