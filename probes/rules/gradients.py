"""Rules on the gradient's flow through the layers: vanishing, exploding, exactly zero.

Layers are compared per element: a whole-tensor norm grows with the square root of the
tensor's size, so ``||g|| / sqrt(numel)`` (the RMS gradient) is what can be compared between a
288-weight conv and a 1,280-weight linear layer. Without the sizes (statistics given without
a model) whole-tensor norms are used, and the evidence says so.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List

from .. import tags
from ..findings import Finding
from ..thresholds import (AUTOTRAINER_VANISH_FIRST_NORM, AUTOTRAINER_VANISH_RATIO, EXPLODING_GROWTH,
                          EXPLODING_RELATIVE_GRAD, VANISH_DW_RATIO, VANISH_RMS_RATIO)
from .common import RunFacts, finite_median, fmt, orders


def gradient_profile(run: RunFacts) -> Dict[str, Any]:
    """Median gradient norm and RMS per weight matrix (input first) over the logged steps."""
    norms = run.grad_norms()
    layers = [n for n in run.order if norms.get(n) and finite_median(norms[n]) is not None]
    if len(layers) < 2:
        return {}
    median = {n: finite_median(norms[n]) for n in layers}
    per_element = all(run.sizes.get(n) for n in layers)
    rms = {n: median[n] / math.sqrt(run.sizes[n]) for n in layers} if per_element else dict(median)
    steps = [s for s, _ in norms[layers[0]]]
    first, last = rms[layers[0]], rms[layers[-1]]
    norm_last = median[layers[-1]]
    profile = {
        "layers": layers, "median_grad_norm": [median[n] for n in layers],
        "grad_norm_ratio_to_last": [median[n] / norm_last if norm_last > 0 else None for n in layers],
        "first_to_last_grad_norm_ratio": median[layers[0]] / norm_last if norm_last > 0 else None,
        "measure": "rms" if per_element else "norm", "logged_steps": [steps[0], steps[-1], len(steps)],
        "falls_towards_input": all(rms[a] <= rms[b] for a, b in zip(layers, layers[1:])),
    }
    if per_element:
        profile.update(numel=[run.sizes[n] for n in layers], median_rms_grad=[rms[n] for n in layers],
                       first_to_last_rms_grad_ratio=first / last if last > 0 else None)
    profile["ratio"] = first / last if last > 0 else None  # the one judged: per element where sizes are known
    return profile


def vanishing(run: RunFacts) -> List[Finding]:
    evidence: Dict[str, Any] = {}
    fired: List[str] = []
    profile = gradient_profile(run)
    ratio = profile.pop("ratio", None)
    if profile:
        evidence.update(profile)
        if ratio is not None and ratio < VANISH_RMS_RATIO:
            fired.append("grad_norm_ratio")  # per element where the sizes are known (evidence["measure"])
            raw = profile["first_to_last_grad_norm_ratio"]
            if raw is not None and raw < AUTOTRAINER_VANISH_RATIO and \
                    profile["median_grad_norm"][0] < AUTOTRAINER_VANISH_FIRST_NORM:
                fired.append("autotrainer")
    change = run.summary.get("weight_change") or {}
    dw = change.get("mean_abs_dw") or []
    if len(dw) >= 2 and dw[-1] > 0:
        evidence.update(weight_change_layers=change["layers"], mean_abs_dw=dw, first_to_last_dw_ratio=dw[0] / dw[-1],
                        weight_change_steps=change.get("steps"))
        if dw[0] / dw[-1] < VANISH_DW_RATIO:
            fired.append("dw_ratio")
    if not fired:
        return []
    evidence["rules"] = fired
    evidence["thresholds"] = {"grad_norm_ratio": VANISH_RMS_RATIO, "dw_ratio": VANISH_DW_RATIO,
                              "autotrainer_ratio": AUTOTRAINER_VANISH_RATIO,
                              "autotrainer_first_norm": AUTOTRAINER_VANISH_FIRST_NORM}
    evidence["first_seen_step"] = (evidence.get("logged_steps") or [None])[0]
    parts = []
    if "median_rms_grad" in evidence:
        per = ", ".join(f"{n} {fmt(v)}" for n, v in zip(evidence["layers"], evidence["median_rms_grad"]))
        r = evidence["first_to_last_rms_grad_ratio"]
        parts.append(f"per element (RMS gradient, ||g||/sqrt(n)), input first, median over logged steps: {per}; "
                     f"first/last {r:.2g} ({orders(1 / r) if r > 0 else 'infinitely'} smaller)")
    if "median_grad_norm" in evidence:
        per = ", ".join(f"{n} {fmt(v)}" for n, v in zip(evidence["layers"], evidence["median_grad_norm"]))
        r = evidence["first_to_last_grad_norm_ratio"]
        what = "whole-tensor gradient norms" if "median_rms_grad" in evidence else \
            "gradient norm per layer, input first (median over logged steps; layer sizes unknown)"
        parts.append(f"{what}: {per}; first/last {r:.2g} ({orders(1 / r) if r else 'infinitely'} smaller)")
    if "mean_abs_dw" in evidence:
        per = ", ".join(fmt(v) for v in evidence["mean_abs_dw"])
        parts.append(f"mean |dW| per step: {per}; first/last {evidence['first_to_last_dw_ratio']:.2g}")
    severity = "error" if "autotrainer" in fired else "warning"
    return [Finding(
        "vanishing-gradient", severity,
        "the gradient shrinks by orders of magnitude on its way to the input: " + "; ".join(parts), evidence,
        cause="each layer multiplies the gradient on its way back by its activation's derivative (a sigmoid's is "
              "at most 0.25) and its weights, so the first layers barely learn",
        fix="use ReLU-family activations, an initialisation matched to the activation (He/Glorot), "
            "normalisation layers or residual connections")]


def total_grad_norm(run: RunFacts) -> Dict[int, float]:
    """sqrt(sum of squared per-parameter gradient norms) per logged step."""
    total: Dict[int, float] = {}
    for series in run.grad_norms().values():
        for step, value in series:
            total[step] = total.get(step, 0.0) + float(value) ** 2
    return {s: math.sqrt(v) for s, v in sorted(total.items())}


def exploding(run: RunFacts) -> List[Finding]:
    evidence: Dict[str, Any] = {}
    parts: List[str] = []
    total = total_grad_norm(run)
    finite = {s: v for s, v in total.items() if math.isfinite(v)}
    if len(finite) >= 2:
        steps = list(finite)
        first_step, first = steps[0], finite[steps[0]]
        peak_step = max(steps[1:], key=finite.get)
        peak = finite[peak_step]
        if first > 0 and peak / first >= EXPLODING_GROWTH:
            norms = run.grad_norms()
            largest = max(norms, key=lambda n: max((v for s, v in norms[n] if s == peak_step), default=0.0))
            grew = next(s for s in steps if finite[s] / first >= EXPLODING_GROWTH)
            evidence.update(first_step=first_step, first_total_grad_norm=first, peak_step=peak_step,
                            peak_total_grad_norm=peak, growth=peak / first, largest_parameter=largest,
                            first_seen_step=grew, threshold_growth=EXPLODING_GROWTH, total_grad_norm=finite)
            parts.append(f"the total gradient norm grew {peak / first:.0f}x, from {fmt(first)} at step {first_step} "
                         f"to {fmt(peak)} at step {peak_step} (past {EXPLODING_GROWTH:.0f}x at step {grew}); "
                         f"largest at {largest}")
    table = run.summary.get("update_ratio") or {}
    relative = dict(zip(table.get("layers", []), table.get("max_relative_grad", [])))
    if relative and max(relative.values()) >= EXPLODING_RELATIVE_GRAD:
        layer = max(relative, key=relative.get)
        at = dict(zip(table["layers"], table["max_relative_grad_step"]))[layer]
        above = {n: v for n, v in relative.items() if v >= EXPLODING_RELATIVE_GRAD}
        evidence.update(max_relative_grad=relative, max_relative_grad_step=dict(zip(table["layers"],
                                                                                    table["max_relative_grad_step"])),
                        largest_relative_grad_layer=layer, threshold_relative_grad=EXPLODING_RELATIVE_GRAD)
        evidence["first_seen_step"] = min(evidence.get("first_seen_step", at), at)
        parts.append(f"the gradient of {layer} reached {fmt(relative[layer])} times the norm of the weights it "
                     f"moves (||grad||/||W||, step {at}; {len(above)} of {len(relative)} weight matrices above "
                     f"{EXPLODING_RELATIVE_GRAD:g}x): one step of a learning rate of 1e-3 would change them by more "
                     f"than their own size")
    if not parts:
        return []
    return [Finding(
        "exploding-gradient", "warning", "; ".join(parts), evidence,
        cause="too large a learning rate, or weights (an initialisation) so large that each layer multiplies the "
              "gradient by more than 1 on its way back",
        fix="lower the learning rate, clip the gradient norm (torch.nn.utils.clip_grad_norm_), initialise with "
            "He/Glorot scales, or normalise layers")]


def zero_gradient(run: RunFacts) -> List[Finding]:
    """Every parameter's gradient exactly 0 at every logged step, or no weight ever changed."""
    norms = run.grad_norms()
    logged = {n: s for n, s in norms.items() if s}
    all_zero = bool(logged) and all(v == 0 for s in logged.values() for _, v in s)
    frozen = (run.summary.get("frozen") or {}).get("parameters") or {}
    steps = (run.summary.get("update_ratio") or run.summary.get("weight_change") or {}).get("steps")
    none_moved = bool(frozen) and all(p["changed"] == 0 for p in frozen.values())
    if not (all_zero or (none_moved and not logged and steps)):
        return []
    evidence: Dict[str, Any] = {"parameters": sorted(logged or frozen), "all_gradients_zero": all_zero,
                                "no_weight_changed": none_moved if frozen else None}
    if logged:
        first = min(s for series in logged.values() for s, _ in series)
        last = max(s for series in logged.values() for s, _ in series)
        evidence.update(logged_steps=[first, last, len(next(iter(logged.values())))], first_seen_step=first)
    what = (f"the gradient of every parameter ({len(evidence['parameters'])}) was exactly 0 at every logged step"
            if all_zero else f"no element of any of the {len(frozen)} parameters ever changed")
    if all_zero and none_moved:
        what += ", and no weight ever changed"
    return [Finding(
        "zero-gradient", "error", what + ": nothing in the model can learn", evidence,
        cause="the loss does not depend on the parameters: an output that is a constant (a softmax over a single "
              "unit is always 1), a graph cut by .detach()/.data/.item(), or every unit in a layer dead",
        fix="look at the output layer and the loss first; check that the loss is computed from the model's output "
            "with gradients enabled")]
