"""results.json: the fixed ratios (one table of key, where it is measured, goal and title), the
machine, and the printed table.

The top-level keys of results.json are a public contract, checked from outside: a ratio's
``key`` here is its name there.
"""
from __future__ import annotations

import datetime
import os
import platform
import time
from dataclasses import asdict, dataclass
from typing import Dict, Optional, Tuple

import torch

from .sizes import Sizes


@dataclass(frozen=True)
class Ratio:
    key: str
    benchmark: str  # the section of details["cpu"] that measures it
    goal: Optional[Tuple[str, float]]  # (comparison, value) from the issue; None: reported without a goal
    title: str  # its row in RESULTS.md
    digits: int = 3  # decimals in RESULTS.md


RATIOS = (
    Ratio("probe_overhead_default", "probe_overhead", ("<=", 1.02), "Probe overhead, default interval (100)"),
    Ratio("probe_overhead_every_step", "probe_overhead", ("<=", 1.3), "Probe overhead, logging every step"),
    Ratio("peak_rss_ratio", "memory", ("<=", 1.10), "Peak RSS, probes / none"),
    Ratio("pair_flags_speedup_vs_loop", "pair_scan", (">=", 50.0), "Pair scan flags, speed-up vs one pair at a time",
          digits=1),
    Ratio("pair_norms_vs_batched", "pair_scan", ("<=", 1.5), "Pair scan norms / batched fwd+bwd"),
    Ratio("train_vs_bare_loop", "throughput", (">=", 0.97), "train.py loop / bare loop (images/s)"),
    Ratio("train_gflops_fraction_of_matmul", "throughput", None, "Training GFLOP/s / matmul GFLOP/s"),
    # issue 14: each the worse of one thread and torch's default count (details: by_threads)
    Ratio("probe_overhead_small_model", "small_model", ("<=", 1.10),
          "Probe overhead, small MLP (784-128-10, batch 32), all probes, default interval"),
    Ratio("port_vs_plain_torch", "port_speed", ("<=", 1.05), "cnn step: the port / plain nn.Sequential torch"),
    Ratio("compile_probe_overhead_default", "compiled_probes", ("<=", 1.05),
          "torch.compile: probed (default interval) / bare compiled step"),
    Ratio("compile_speedup_with_probes", "compiled_probes", (">=", 1.3),
          "torch.compile with probes: speed-up over the eager bare step"),
    # optional: only where TensorFlow/Keras import; otherwise null, with the reason
    Ratio("train_vs_keras", "keras", (">=", 1.3), "Keras step / train.py step (cnn), speed-up"),
)


def goal(ratio: Ratio, value: Optional[float], why: Optional[str] = None) -> Dict:
    """results.json's ``goals`` entry: the goal as text, and whether ``value`` meets it (None: no
    goal, or nothing measured, and then ``why``)."""
    if ratio.goal is None:
        return {"goal": None, "met": None}
    op, target = ratio.goal
    if value is None:
        return {"goal": f"{op} {target}", "met": None, "why": why or "not measured"}
    return {"goal": f"{op} {target}", "met": value <= target if op == "<=" else value >= target}


def _why(section: Dict) -> str:
    """Why a benchmark section has no figure: skipped (and why) or failed (and how)."""
    if section.get("skipped"):
        return f"skipped: {section['skipped']}"
    return f"failed: {section.get('error', 'no figure')}"


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


def assemble(details: Dict, mode: str, sizes: Sizes, started: float, load_start: float, threads_default: int) -> Dict:
    """results.json: the CPU run's ratios (medians) first, then their goals, the run's
    circumstances, each ratio's spread and all details."""
    sections = {r.key: details["cpu"][r.benchmark] for r in RATIOS}
    picked = {key: section.get(key) for key, section in sections.items()}
    return {
        **{key: (s["median"] if s else None) for key, s in picked.items()},
        "goals": {r.key: goal(r, picked[r.key]["median"] if picked[r.key] else None, _why(sections[r.key]))
                  for r in RATIOS},
        # what was not measured, and why (e.g. train_vs_keras without TensorFlow)
        "skipped": {key: _why(sections[key]) for key, s in picked.items() if not s},
        "mode": mode,
        "sizes": asdict(sizes),
        "machine": machine(),
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "threads_default": threads_default,
        "load_average_start_end": [round(load_start, 2), round(os.getloadavg()[0], 2)],
        "seconds": round(time.time() - started, 1),
        "spread": picked,
        "details": details,
    }


def table(results: Dict) -> str:
    """The ratios as printed at the end of a run."""
    rows = [f"{'ratio':34} {'median':>9} {'min':>9} {'max':>9}  goal      met"]
    for r in RATIOS:
        s = results["spread"][r.key]
        g = results["goals"][r.key]
        if s is None:
            rows.append(f"{r.key:34} {'-':>9} {'-':>9} {'-':>9}  {g['goal'] or '':9} -  ({g['why']})")
            continue
        met = "-" if g["met"] is None else ("yes" if g["met"] else "NO")
        rows.append(f"{r.key:34} {s['median']:9.3f} {s['min']:9.3f} {s['max']:9.3f}  {g['goal'] or '':9} {met}")
    return "\n".join(rows)
