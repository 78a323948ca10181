"""One seeded trial of a setup, run the way a user runs it, and what the diagnosis made of it.

The loop is a plain one: ``probes.watch(model, every=N, optimizer=opt)``, ``monitor.check(loss_fn,
first batch)`` before training, then forward, loss, ``log_loss``, backward, step; at the end
``monitor.diagnose()`` (with the pair scan's facts where the setup has one). Besides the
findings, the statistics each rule judges are recorded whether or not it fired, so that the
thresholds' margins can be read off the corpus (bench/diagnosis.py prints them).
"""
from __future__ import annotations

import math
import statistics
import time
from typing import Any, Dict, List, Optional

import torch

import probes
from probes.findings import at_least
from probes.thresholds import ACTIVE_BEFORE, ACTIVE_LOGS
from probes.rules import gradients, loss as loss_rules
from probes.rules.common import RunFacts
from probes.rules.updates import embeddings, spread
from probes import tags

from .setups import Setup


def run(setup: Setup, seed: int) -> Dict[str, Any]:
    """Train one trial of ``setup`` with ``seed``; the findings and the statistics behind them."""
    torch.manual_seed(seed)
    trial = setup.build(seed)
    model, opt = trial.model, trial.optimizer
    start = time.time()
    with probes.watch(model, every=trial.every, optimizer=opt) as monitor:
        monitor.check(trial.loss_fn, trial.batches[0])
        for step, (x, y) in enumerate(trial.batches):
            opt.zero_grad()
            loss = trial.loss_fn(model(x), y)
            monitor.log_loss(loss)
            loss.backward()
            if trial.before_step is not None:
                trial.before_step()
            opt.step()
            if trial.after_step is not None:
                trial.after_step(step)
    scan = trial.scan(model) if trial.scan is not None else None
    findings = monitor.diagnose(pair_scan=scan)
    checks, monitor.checks = monitor.checks, []
    in_training = monitor.diagnose(pair_scan=scan)  # what a user who never calls check() gets
    monitor.checks = checks
    ids = [f.id for f in findings]
    warned = [f.id for f in at_least(findings, "warning")]
    return {
        "setup": setup.name, "seed": seed, "expected": setup.expected, "steps": len(trial.batches),
        "seconds": round(time.time() - start, 2),
        "findings": {f.id: f.severity for f in findings},
        "from_check": [f.id for f in checks],
        "caused_by": {f.id: f.caused_by for f in findings if f.caused_by},
        "named": setup.expected in ids if setup.expected else None,
        "named_in_training": setup.expected in [f.id for f in in_training] if setup.expected else None,
        "warnings": warned,
        "measures": measures(monitor, scan),
    }


def _r(x: Optional[float]) -> Optional[float]:
    return None if x is None or not math.isfinite(x) else float(f"{x:.4g}")


def measures(monitor: probes.Monitor, scan: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The statistic each rule compares with its threshold, for this run (None: not measured)."""
    summary = monitor.summary()
    run = RunFacts(summary, monitor.kept, list(monitor.structure.get("weights", [])), monitor.structure)
    profile = gradients.gradient_profile(run)
    total = {s: v for s, v in gradients.total_grad_norm(run).items() if math.isfinite(v)}
    steps = list(total)
    growth = max(total[s] for s in steps[1:]) / total[steps[0]] if len(steps) > 1 and total[steps[0]] > 0 else None
    layers = (summary.get("dead_units") or {}).get("layers", {})
    dead = max((l["dead"] / l["units"] for l in layers.values()), default=None)
    died = max((sum(u[1] >= ACTIVE_BEFORE and u[3] >= ACTIVE_LOGS for u in l.get("fired_then_silent", [])) / l["units"]
                for l in layers.values()), default=None)
    saturated = tags.series(monitor.kept, tags.ACTIVATION_SATURATED_FRACTION)
    output = run.output_layer()
    hidden = [statistics.median([v for _, v in s]) for n, s in saturated.items() if s and tags.module_name(n) != output
              and "softmax" not in run.layer_types().get(tags.module_name(n), "").lower()]
    windows = loss_rules.judged_windows(run)
    decrease = rise = None
    if len(windows) >= 2:
        start, end, _ = loss_rules._ends([w[1] for w in windows])
        decrease = (start - end) / start if start > 0 else None
        low, rise = windows[0][1], 0.0
        for w in windows[1:]:
            rise, low = max(rise, w[1] - low), min(low, w[1])
        rise = rise / windows[0][1] if windows[0][1] > 0 else None
    x, o = summary.get("inputs") or {}, summary.get("outputs") or {}
    dw = (summary.get("weight_change") or {}).get("mean_abs_dw") or []
    table = summary.get("update_ratio") or {}
    ratio = spread(table, embeddings(run))
    relative = max(table.get("max_relative_grad") or [float("nan")])
    out = {
        "rms_grad_first_to_last": _r(profile.get("ratio")), "total_grad_norm_growth": _r(growth),
        "dw_first_to_last": _r(dw[0] / dw[-1]) if len(dw) >= 2 and dw[-1] > 0 else None,
        "dead_fraction": _r(dead), "died_fraction": _r(died), "hidden_saturated": _r(max(hidden, default=None)),
        "loss_decrease": _r(decrease), "loss_rise": _r(rise), "loss_windows": len(windows),
        "input_rms": _r(x.get("rms")), "input_max_abs": _r(x.get("max_abs")),
        "input_constant_fraction": _r(x.get("constant_fraction")),
        "update_ratio_spread": _r(ratio[1]) if ratio else None, "max_relative_grad": _r(relative),
        "nonfinite": bool(summary.get("nonfinite")),
    }
    for k in ("units", "probability_rows", "log_probability_rows", "unit_interval", "zero_fraction",
              "negative_fraction", "one_fraction", "grad_row_sum", "grad_single_entry_rows", "logit_loss_fit",
              "squared_error_fit"):
        out[f"output_{k}"] = _r(o[k]) if isinstance(o.get(k), (int, float)) else None
    if scan:
        out["pair_scan_all_zero"] = scan.get("all_zero")
    return out
