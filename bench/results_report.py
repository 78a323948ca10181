"""RESULTS.md from a results.json of bench/run.py: machine, ratios, goals met or not and why.

    python bench/results_report.py bench/results.json   # rewrite RESULTS.md beside it
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict, List

if __package__ in (None, ""):  # run as a script: the repository's packages, bench among them
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report_speed import _by_threads, speed_sections  # noqa: E402
from bench.results import RATIOS  # noqa: E402
from probes.activations import HIST_SAMPLE  # noqa: E402


def _s(spread: Dict, unit: str = "", digits: int = 3) -> str:
    return f"{spread['median']:.{digits}f}{unit} ({spread['min']:.{digits}f}-{spread['max']:.{digits}f}, n={spread['n']})"


def write_report(r: Dict) -> str:
    cpu = r["details"]["cpu"]
    m = r["machine"]
    po, mem, ps, tp, cfg = cpu["probe_overhead"], cpu["memory"], cpu["pair_scan"], cpu["throughput"], cpu["configurations"]
    lines: List[str] = [
        "# Benchmark results",
        "",
        f"`python bench/run.py{'' if r['mode'] == 'full' else ' --' + r['mode']}` on {r['date']}, "
        f"{r['seconds']:.0f} s. Mode **{r['mode']}**.",
        "",
        f"- Machine: {m.get('cpu')}, {m['cpu_count']} cores, {m.get('memory_gb')} GB; {m['platform']}; "
        f"Python {m['python']}, torch {r['torch']}" + (f"; GPU {m['gpu']}" if "gpu" in m else "; no GPU (CPU only)") + ".",
        f"- Threads: torch default {r['threads_default']}; the run used **{cfg['threads_chosen']}**"
        + (" (the faster in the thread comparison below)." if "threads" in cfg else "."),
        f"- Memory: {r.get('malloc', 'not recorded (an older run)')}, for every benchmark alike (`--malloc`, as "
        "train.py's; experiments/allocator.py).",
        f"- **The machine is shared**: a virtual machine on a host other jobs use, its {m['cpu_count']} cores "
        f"sometimes busy with other test suites (1-minute load average {r['load_average_start_end'][0]} at the "
        f"start, {r['load_average_start_end'][1]} at the end, the benchmark's own {cfg['threads_chosen']} "
        "thread(s) included). Absolute times "
        "are noisy and "
        "not comparable between runs; every ratio is taken within one repeat of interleaved runs (A B A B, order "
        "rotated each round), so load that comes and goes falls on both sides, and the figures are medians over "
        "repeats with the spread (min-max) beside them.",
        "",
        "## Ratios (CPU)",
        "",
        "| ratio | key | median (min-max, repeats) | goal | met |",
        "| --- | --- | --- | --- | --- |",
    ]
    for ratio in RATIOS:
        goal = r["goals"].get(ratio.key) or {"goal": None, "met": None, "why": "not in this results.json (an older run)"}
        if r["spread"].get(ratio.key) is None:  # skipped or failed: said, not hidden
            lines.append(f"| {ratio.title} | `{ratio.key}` | not measured: {goal.get('why', '')} | "
                         f"{goal['goal'] or '-'} | - |")
            continue
        met = "-" if goal["met"] is None else ("yes" if goal["met"] else "**no**")
        lines.append(f"| {ratio.title} | `{ratio.key}` | {_s(r['spread'][ratio.key], digits=ratio.digits)} | "
                     f"{goal['goal'] or '-'} | {met} |")
    close = [ratio.key for ratio in RATIOS if _straddles(r, ratio.key)]
    if close:
        lines += ["", "Within noise of the goal (the spread of repeats crosses it, so another run on this shared "
                  "machine may land on the other side): " + ", ".join(f"`{k}`" for k in close) + "."]
    lines += ["", "## Each goal: measured, and why", ""]

    steps = po["step_seconds"]
    lines += [
        f"**Probe overhead** ({po['method']}; batch {po['batch']}). Bare step {_s(steps['bare'], ' s')}; "
        f"with probes attached between logs {_s(steps['probes_between_logs'], ' s')} (ratio "
        f"{po['between_logs_ratio']['median']}, noise: the spread of a whole-step difference); logging step "
        f"{_s(steps['probes_every_step'], ' s')}. Between logs the statistics probes' hooks are not registered at "
        "all (they are added when a logging step starts); what runs on every step is `Monitor.step` and two cheap "
        "per-step probes: dead units (a max over the units of each ReLU that have not fired yet: none, once all "
        "have) and the non-finite sentinel (the step's loss read; the gradients are checked at logging steps, in "
        "one fused norm). Their own time, measured inside the hooks (on a "
        f"CPU they run synchronously), is {po['probe_seconds_between_logs']['median'] * 1e6:.0f} us a step; that and "
        "one logging step in 100 give the "
        f"default-interval figure (from whole steps instead: {_s(po['probe_overhead_default_from_whole_steps'])}). "
        f"When every step logs: {_every_step(po)} with bucket counts from a "
        f"{HIST_SAMPLE:,}-element stratified sample per tensor (the default); "
        + (f"{po['every_step_exact_ratio']['median']}x reading every element, as a logging step at the default "
           "interval does (`moments_sample='exact'`). " if "every_step_exact_ratio" in po else
           f"{po['every_step_exact_hist_ratio']['median']}x counting every element (`hist_sample=None`). ")
        + "From "
        "measurements made while writing this benchmark (not repeated by it): a logging step of the cnn at batch "
        "128 summarises ~57 M elements read whole (every layer's output and output gradient, every parameter "
        "gradient); sum, min/max, sum of squares and the exact zero count are vectorised, memory-bound passes, but "
        "putting each element in its bucket is a scalar loop (`bincount`, ~3 ns an element on this CPU), about 0.2 s "
        "per step on its own; hence the histogram sample. Each tensor is read from memory once, in cache-sized "
        "pieces, and a ReLU's output is summarised from its input's pass (probes/stats.py). A logging step that "
        "comes fewer than 20 steps after the one before (here every step) has no quiet steps to spread its cost "
        "over, so its layer outputs and output gradients of more than 524,288 elements are read as one 16 KiB "
        "block drawn in every k, spread over the batch (`moments_sample`, probes/stats.py): their sums and norms are scaled "
        "estimates, their zero fractions and extremes the blocks'. Parameter gradients, and every statistic at the "
        "default interval, are exact.",
        "",
    ]
    if goal_unmet(r, "probe_overhead_every_step"):
        lines += ["The every-step goal is **not met** as measured. What is left: the parameter gradients read "
                  "whole (the dense layer's 1.2 M), the blocks copied and read, ~16 histogram samples of 16,384 "
                  "elements bucketed, the sink's ~90 events a step, and the per-tensor ops of every summary (a few "
                  "microseconds each). Two threads speed the convolutions up ~1.8x but these passes less, so the "
                  "ratio is worse at the default thread count than at one.", ""]
    lines += speed_sections(r) + [
        f"**Memory.** Peak RSS without probes {_s(mem['peak_rss_mb']['bare'], ' MB', 1)}, with "
        f"{_s(mem['peak_rss_mb']['probes'], ' MB', 1)} ({mem['peak_method']}); the ratio includes the Python, torch "
        "and MNIST memory of the process, as a user's training process would"
        + ("; below 1, the probes cannot have lowered it (they add buffers, never free the model's): the ratio "
           "then shows how much peak RSS varies between processes" if mem_ratio(r) < 1 else "") + ". Growth: "
        f"{mem['growth_method']}. " + _growth(mem)
        + ("The run is shorter than 2,000 steps in this mode; the full run (`python bench/run.py`) does 2,000. "
           if mem["growth_steps"] < 2000 else "")
        + "The growth run uses batch "
        f"{r['sizes']['growth_batch']} so that 2,000 steps fit in the time budget: a leak in the probes would grow "
        "per step or per log, not per image. RSS trace (step, MB): "
        + (", ".join(f"{s}: {v}" for s, v in mem["rss_trace_mb"][:: max(1, len(mem["rss_trace_mb"]) // 10)]) or "none")
        + ".",
        "",
        f"**Pair scan flags** ({ps['method']}). The one-pair loop (forward+backward of one image and target, then "
        f"checking every parameter gradient for zeros) takes {_s(ps['loop_seconds_per_pair'], ' s', 5)} a pair, "
        f"extrapolated to {ps['loop_extrapolated_seconds_10000_pairs']} s for 10,000 pairs (timed on a sample, not "
        f"run in full). The flags of {ps['flags_pairs']} pairs take {_s(ps['flags_seconds'], ' s')}: one forward "
        "pass, exact because the cnn's last layer is a Linear with bias (proved against per-pair autograd in "
        "tests/test_pair_scan.py; without an output bias the scan takes full gradients).",
        "",
        f"**Pair scan norms** on {ps['norms_pairs']} pairs ({ps['norms_method']} path): "
        f"{_s(ps['norms_seconds'], ' s')} vs {_s(ps['batched_seconds'], ' s')} for one ordinary batched "
        f"forward+backward over the same pairs ("
        + "; ".join(f"batches of {b} pairs: {_s(v, ' s')}" for b, v in ps["batched_seconds_by_batch"].items())
        + "; the fastest is the baseline); "
        f"{ps['norms_seconds_per_pair'] * 1e3:.2f} ms a pair against "
        f"{ps['torch_func_seconds_per_pair'] * 1e3:.1f} ms a pair for the previous torch.func implementation "
        f"(timed on 20 pairs). Largest relative difference from the torch.func norms: "
        f"{ps['norms_max_relative_difference_vs_torch_func']:.1e}. One forward per chunk of images and one "
        "backward per target give each layer's input and output gradient; per-example norms follow in closed form "
        "(|a||g| for a Linear layer, so the 1.2 M-weight dense layer's per-pair gradients are never formed; a "
        "convolution's per-example gradient is one batched matmul per chunk). Memory is bounded by chunking images "
        "to a budget (256 MB by default)."
        + ("" if ps["norms_pairs"] >= 10_000 else f" This mode scans {ps['norms_pairs']} pairs, not 10,000: the "
           "cost is linear in the pairs, so the ratio carries over; the full run uses 10,000."),
        "",
        f"**Training throughput** ({tp['method']}). train.py's loop "
        f"{_s(tp['images_per_second']['train_py'], ' images/s', 1)}, bare loop "
        f"{_s(tp['images_per_second']['bare_loop'], ' images/s', 1)}. Achieved {_s(tp['train_gflops'], ' GFLOP/s', 1)} "
        f"({tp['flops_per_image_fwd_bwd'] / 1e6:.0f} MFLOP an image forward+backward) against "
        f"{_s(tp['matmul_gflops'], ' GFLOP/s', 1)} for a large matmul. The cnn's step is not all matmul: batch "
        "norm statistics, ReLU, max-pool, dropout and the Adadelta update are memory-bound passes that "
        "FlopCounterMode does not count.",
        "",
        "## What was tried for speed",
        "",
    ]
    if "threads" in cfg:
        lines.append("- Threads (bare cnn step, seconds): " + "; ".join(f"{k}: {_s(v, ' s')}" for k, v in cfg["threads"].items())
                     + f". Chosen: {cfg['threads_chosen']}. Which is faster depends on the load: in earlier runs on "
                     "this shared machine, with other processes busy on its cores, OpenMP's spinning threads waited "
                     "for each other and one thread was sometimes faster. So train.py keeps torch's default "
                     "(set `OMP_NUM_THREADS=1` on a shared machine).")
    cl = cfg["channels_last"]
    lines.append(f"- channels_last (model and input): {cl['speedup']}x the contiguous step "
                 f"(contiguous {_s(cl['contiguous'], ' s')}, channels_last {_s(cl['channels_last'], ' s')}); "
                 f"outputs agree: {cl['outputs_agree']}. The port builds channels_last by default "
                 "(`models.build(\"cnn\", channels_last=False)` for NCHW): interleaved at one thread, batch 128, on "
                 "this machine while writing it, the port's step went from 0.98x to 0.89x a plain NCHW torch net's "
                 "(a plain channels_last net: 0.87x); on an H200 GPU the layout made no difference beyond noise "
                 "(3.17 vs 3.04 ms a step). The probes read channels_last tensors in place.")
    if "compile" in cfg:
        c = cfg["compile"]
        if c.get("works"):
            wp = c["with_probes_between_logs"]
            lines.append(f"- torch.compile (bare model): {c['speedup']}x the eager step after {c['compile_seconds']} s "
                         "of compiling (Inductor keeps compiled kernels in an on-disk cache; a first compile on this "
                         f"machine took ~25 s in an earlier run); outputs agree: {c['outputs_agree']}. " + _compile_with_probes(wp))
        else:
            lines.append(f"- torch.compile: failed here ({c.get('error')}).")
    else:
        lines.append("- torch.compile: only tried in the full run (a first compile took ~25 s here in an earlier run).")
    if "cuda" in r["details"]:
        g = r["details"]["cuda"]
        lines += ["", "## GPU", "",
                  f"probe overhead default {g['probe_overhead']['probe_overhead_default']['median']}, every step "
                  f"{g['probe_overhead']['probe_overhead_every_step']['median']}; peak memory ratio "
                  f"{g['memory']['peak_ratio']}; pair flags speed-up {g['pair_scan']['pair_flags_speedup_vs_loop']['median']}; "
                  f"norms/batched {g['pair_scan']['pair_norms_vs_batched']['median']}; train/bare "
                  f"{g['throughput']['train_vs_bare_loop']['median']}." + _gpu_speed(g)]
    else:
        lines += ["", "No GPU on this machine: the CUDA path of the benchmark (same measurements, synchronised "
                  "timings, peak allocated memory instead of RSS) did not run.", ""]
    lines += ["All figures, medians and spreads are in `bench/results.json` (`details`).", ""]
    return "\n".join(lines)


def _every_step(po: Dict) -> str:
    """The every-step ratio at each thread count (the headline is the worse), and in the
    four-way run beside the other configurations; an older results.json has only the latter."""
    by = po.get("every_step_by_threads")
    if not by:
        return f"{po['probe_overhead_every_step']['median']}x"
    four = po["every_step_in_the_four_way_run"]
    return (_by_threads(by, lambda v: f"{_s(v['probe_overhead_every_step'])} (bare step "
                                      f"{v['step_seconds']['bare']['median'] * 1e3:.0f} ms)" if "error" not in v
                        else f"failed ({v['error']})")
            + f"; in the four-way run beside the other configurations {four['median']}x")


def _straddles(r: Dict, key: str) -> bool:
    goal = r["goals"].get(key, {}).get("goal")
    if not goal or r["spread"].get(key) is None:
        return False
    value = float(goal.split()[1])
    return r["spread"][key]["min"] <= value <= r["spread"][key]["max"]


def _growth(mem: Dict) -> str:
    """The growth run's sentence: the RSS band and the fitted line's rise, when the trace has
    the two points a line needs (a short run, or none, may not)."""
    if mem["growth_mb"] is None:  # the line is fitted from growth_from_step on
        first = mem["growth_from_step"]
        points = sum(1 for step, _ in mem["rss_trace_mb"] if first is not None and step >= first)
        return f"The RSS trace has {points} point{'' if points == 1 else 's'} to fit a line through: too few. "
    low, high = mem["rss_band_mb"]
    verdict = " (under 2% of RSS: no growth)" if abs(mem["growth_mb"]) <= 0.02 * low else " (more than 2% of RSS)"
    return (f"From step {mem['growth_from_step']} on, RSS stays between {low} and {high} MB (the allocator's ups and "
            f"downs), and a least-squares line through it rises {mem['growth_mb']} MB over the run{verdict}. ")


def _compile_with_probes(wp: Dict) -> str:
    """What torch.compile did with train.py's probes attached (bench/benchmarks/torch_compile.py)."""
    if "error" in wp:
        return f"With train.py's probes attached before compiling it failed: {wp['error']}."
    return (f"With train.py's probes attached before compiling (logging steps eager, the steps between logs "
            f"compiled): {wp['speedup']}x the eager bare step, {wp['recompiled_graphs']} graphs compiled, "
            f"{wp['warmup_seconds']} s to warm up; the per-step hooks ran in the compiled steps: "
            f"{'yes' if wp['hooks_ran'] else 'NO'}. Both orders (attach then compile, compile then attach), at "
            "the default interval and against a compiled bare model, are measured in the torch.compile paragraph "
            "above.")


def _gpu_speed(g: Dict) -> str:
    """The speed ratios on the GPU, where measured (one thread count: the GPU does the work)."""
    parts = []
    for section, key in (("small_model", "probe_overhead_small_model"), ("port_speed", "port_vs_plain_torch"),
                         ("compiled_probes", "compile_probe_overhead_default"),
                         ("compiled_probes", "compile_speedup_with_probes")):
        value = g.get(section, {}).get(key)
        parts.append(f"{key} {value['median'] if value else 'not measured'}")
    return " " + "; ".join(parts) + "."


def mem_ratio(r: Dict) -> float:
    return r["spread"]["peak_rss_ratio"]["median"]


def goal_unmet(r: Dict, key: str) -> bool:
    return r["goals"][key]["met"] is False


if __name__ == "__main__":
    import json

    source = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("results.json"))
    source.with_name("RESULTS.md").write_text(write_report(json.loads(source.read_text())))
