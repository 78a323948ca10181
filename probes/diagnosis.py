"""Diagnosis: rules over the probes' statistics that say, with evidence, what is wrong.

Each rule reads what the probes already measured — ``Monitor.summary()`` (per probe), the
scalars a :class:`probes.sinks.MemorySink` kept (``grad_norm/<param>``,
``activation_saturated_fraction/<layer>``, ``train/loss`` ...) and, optionally, a pair scan's
facts — and returns :class:`Finding` objects with a stable ``id``, a severity, a message with
the numbers, the evidence (numbers, layer and parameter names, steps), the likely cause and a
fix. Nothing here knows about particular models: give it any model's statistics.

Thresholds are module constants. Where one comes from the literature it says so; the others
are ours, chosen on the runs measured in this project (numbers next to each constant) so
that the four phenomena fire and the healthy contrasts (``cnn --loss logits``,
``deep-relu``) do not.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from torch import nn

from . import tags

SEVERITIES = ("info", "warning", "error")

# -- thresholds -----------------------------------------------------------------------------
# AUTOTRAINER (Zhang et al., ICSE 2021) flags vanishing gradients when the gradient norm of the
# first layer is below 1e-3 of the last layer's and below 1e-4 in absolute terms.
AUTOTRAINER_VANISH_RATIO = 1e-3
AUTOTRAINER_VANISH_FIRST_NORM = 1e-4
# Ours: a first-to-last gradient-norm ratio below 0.1 (one order of magnitude) is already a
# vanishing gradient worth a warning. Measured (median over logged steps, whole-matrix norms):
# deep-sigmoid 0.011 after 20 steps and 0.057 after 600 (its default), deep-relu 1.3 and 2.8;
# AUTOTRAINER's 1e-3 misses deep-sigmoid.
VANISH_GRAD_RATIO = 0.1
# Ours, for runs with WeightChange but no gradient norms: mean |dW| first/last below 0.05.
# Measured: deep-sigmoid 0.0018 (20 steps) and 0.015 (600 steps); deep-relu 0.090 and 0.157.
VANISH_DW_RATIO = 0.05
# Ours: a layer whose ReLU units never fired is a warning from 10% of its units on; a few dead
# units are common and harmless (deep-relu, 20 steps: 0, 2 of 750 and 5 of 500 units).
DEAD_RELU_WARN_FRACTION = 0.1
# Ours: half the outputs of a sigmoid/tanh layer within 1e-3 of its bounds (probes/stats.py
# SATURATION_TOL), median over logged steps. Measured: 0.0 on deep-sigmoid and scaled-conv.
SATURATION_WARN_FRACTION = 0.5
# Ours: the total gradient norm growing 100x (two orders of magnitude) above its first
# logged value. Measured (largest later total norm / first): cnn 0.14 (896 steps), deep-sigmoid
# 0.32, deep-relu 2.1 (600 steps), dense-mlp 2.4 (469), scaled-conv 0.35 and 0.65 (200).
EXPLODING_GROWTH = 100.0
# Ours: ||update||/||weight|| of two layers (or of one layer in two parameterisations of the
# same function) apart by 10x or more. Measured on scaled-conv after 15 steps: variant 1's
# conv2 0.024 vs variant 2's 0.00012 (197x); within variant 2, conv1 0.0091 vs conv2 0.00012
# (75x); within variant 1, 1.02x.
UPDATE_RATIO_SPREAD = 10.0

Series = Sequence[Tuple[int, float]]


@dataclass
class Finding:
    """One diagnosis: what was seen, how sure, the numbers that show it, why, and what to do."""

    id: str
    severity: str  # "info" | "warning" | "error"
    message: str
    evidence: Dict[str, Any] = field(default_factory=dict)
    cause: str = ""
    fix: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """The finding as a short paragraph: message, cause, fix."""
        text = f"[{self.severity}] {self.id}: {self.message}"
        if self.cause:
            text += f"\n    cause: {self.cause}"
        if self.fix:
            text += f"\n    fix: {self.fix}"
        return text


def at_least(findings: Sequence[Finding], severity: str) -> List[Finding]:
    """The findings of ``severity`` or worse."""
    rank = SEVERITIES.index(severity)
    return [f for f in findings if SEVERITIES.index(f.severity) >= rank]


def report(findings: Sequence[Finding]) -> str:
    """All findings as text, worst first; one line when there is nothing to report."""
    if not findings:
        return "diagnosis: nothing abnormal found"
    ordered = sorted(findings, key=lambda f: -SEVERITIES.index(f.severity))
    return "diagnosis:\n" + "\n".join(f.describe() for f in ordered)


def diagnose(summary: Optional[Mapping[str, Any]] = None, *, scalars: Optional[Mapping[str, Series]] = None,
             model: Optional[nn.Module] = None, pair_scan: Optional[Mapping[str, Any]] = None,
             weight_order: Optional[Sequence[str]] = None) -> List[Finding]:
    """Run every rule on one training run's statistics.

    Args:
        summary: ``Monitor.summary()``: ``{probe name: probe.summary()}``.
        scalars: ``MemorySink.scalars`` of the run: ``{tag: [(step, value), ...]}``.
        model: the trained model, for the order of its weight matrices (input first); without
            it ``weight_order`` (their names), else the order of the WeightChange / UpdateRatio
            summaries is used.
        pair_scan: facts of a pair scan against a clipping loss: ``pairs``, ``all_zero``,
            ``clipped``, ``all_zero_iff_target_prob_clipped``, ``eps`` (and optionally
            ``min_target_prob``, ``all_zero_but_not_clipped``, ``step``).
    """
    summary, scalars = dict(summary or {}), dict(scalars or {})
    order = list(weight_order) if weight_order and model is None else _weight_order(summary, model)
    findings: List[Finding] = []
    for rule in (_non_finite, _exploding):
        findings += rule(summary, scalars)
    if pair_scan:
        findings += _loss_clipping(pair_scan)
    findings += _vanishing(summary, scalars, order)
    findings += _frozen_by_dead_input(summary)
    findings += _dead_relu(summary)
    findings += _saturation(scalars)
    findings += _update_ratio_within(summary)
    return findings


def compare_update_ratios(variants: Mapping[str, Mapping[str, Any]]) -> List[Finding]:
    """Several parameterisations of one function (e.g. scaled-conv ``--compare``), each a
    ``Monitor.summary()`` with an ``update_ratio`` entry: a finding when the same layer's mean
    ||update||/||weight|| differs by :data:`UPDATE_RATIO_SPREAD` or more between them."""
    tables = {label: s["update_ratio"] for label, s in variants.items() if s.get("update_ratio")}
    if len(tables) < 2:
        return []
    per_layer: Dict[str, Dict[str, float]] = {}
    for label, table in tables.items():
        for layer, ratio in zip(table["layers"], table["mean_update_ratio"]):
            per_layer.setdefault(layer, {})[label] = ratio
    worst = None
    for layer, by_variant in per_layer.items():
        if len(by_variant) < 2 or min(by_variant.values()) <= 0:
            continue
        spread = max(by_variant.values()) / min(by_variant.values())
        if worst is None or spread > worst[1]:
            worst = (layer, spread, by_variant)
    if worst is None or worst[1] < UPDATE_RATIO_SPREAD:
        return []
    layer, spread, by_variant = worst
    fast, slow = max(by_variant, key=by_variant.get), min(by_variant, key=by_variant.get)
    grads = {label: dict(zip(t["layers"], t["mean_grad_norm"])).get(layer) for label, t in tables.items()}
    updates = {label: dict(zip(t["layers"], t["mean_update_norm"])).get(layer) for label, t in tables.items()}
    within = {label: _spread(t) for label, t in tables.items()}
    steps = {label: t.get("steps") for label, t in tables.items()}
    return [Finding(
        "update-ratio-imbalance", "warning",
        f"mean ||update||/||weight|| of {layer} is {_fmt(by_variant[fast])} in {fast} but {_fmt(by_variant[slow])} "
        f"in {slow}: {spread:.0f}x apart ({_orders(spread)}) for the same function, though ||update|| is alike "
        f"({', '.join(f'{k} {_fmt(v)}' for k, v in updates.items())}); relative to its weights, {slow} learns "
        f"{spread:.0f}x slower per step",
        {"layer": layer, "mean_update_ratio": by_variant, "mean_update_norm": updates, "mean_grad_norm": grads,
         "spread": spread, "steps": steps, "threshold": UPDATE_RATIO_SPREAD,
         "within_variant_spread": {k: v[1] for k, v in within.items() if v},
         "per_variant_layers": {label: dict(zip(t["layers"], t["mean_update_ratio"])) for label, t in tables.items()}},
        cause="the weights of the slow variant are larger for the same function (a constant scale outside the "
              "layer), and an adaptive optimizer (Adam, RMSprop, Adadelta) makes each step about lr per weight "
              "whatever the gradient's scale, so the same step is a smaller relative change",
        fix="parameterise the layers so weights are of order 1 (move constant scales into the initialisation, "
            "not into the forward pass), or scale the learning rate per layer with the weights' size")]


# -- helpers -------------------------------------------------------------------------------
def _fmt(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.2g}"


def _orders(ratio: float) -> str:
    orders = math.log10(ratio) if ratio > 0 else float("inf")
    return f"{orders:.1f} orders of magnitude"


def _weight_order(summary: Mapping[str, Any], model: Optional[nn.Module]) -> List[str]:
    """Weight-matrix parameter names, the input's first."""
    if model is not None:
        return [n for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    for probe in ("weight_change", "update_ratio"):
        if summary.get(probe, {}).get("layers"):
            return list(summary[probe]["layers"])
    return []


def _values(series: Series) -> List[float]:
    return [float(v) for _, v in series]


def _spread(table: Mapping[str, Any]) -> Optional[Tuple[str, float, str]]:
    """(fastest layer, max/min of mean update ratio, slowest layer) of an UpdateRatio summary."""
    ratios = dict(zip(table.get("layers", []), table.get("mean_update_ratio", [])))
    ratios = {k: v for k, v in ratios.items() if v > 0 and math.isfinite(v)}
    if len(ratios) < 2:
        return None
    fast, slow = max(ratios, key=ratios.get), min(ratios, key=ratios.get)
    return fast, ratios[fast] / ratios[slow], slow


# -- rules ---------------------------------------------------------------------------------
def _non_finite(summary: Mapping[str, Any], scalars: Mapping[str, Series]) -> List[Finding]:
    event = summary.get("nonfinite")
    evidence: Dict[str, Any] = {}
    if event:
        evidence = {"step": event["step"], "where": event["where"], "name": event["name"]}
    else:
        first = None
        watched = {tags.LOSS: scalars.get(tags.LOSS, [])}
        for kind in (tags.GRAD_NORM, tags.OUTPUT_GRAD_NORM):
            watched.update({tags.tag(kind, name): s for name, s in tags.series(scalars, kind).items()})
        for tag, series in watched.items():
            for step, value in series:
                if not math.isfinite(value):
                    if first is None or step < first[0]:
                        first = (step, tag, value)
                    break
        if first is None:
            return []
        evidence = {"step": first[0], "where": "scalar", "name": first[1], "value": str(first[2])}
    return [Finding(
        "non-finite", "error",
        f"NaN/Inf first seen at step {evidence['step']} in {evidence['where']} {evidence['name']}",
        evidence,
        cause="an overflow (too large a learning rate, exploding gradients) or an invalid operation "
              "(log of 0, division by 0) in the model or the loss",
        fix="lower the learning rate, clip gradients, or compute the loss from logits; look at the named layer")]


def _total_grad_norm(scalars: Mapping[str, Series]) -> Dict[int, float]:
    """sqrt(sum of squared per-parameter gradient norms) per logged step."""
    total: Dict[int, float] = {}
    for series in tags.series(scalars, tags.GRAD_NORM).values():
        for step, value in series:
            total[step] = total.get(step, 0.0) + float(value) ** 2
    return {s: math.sqrt(v) for s, v in sorted(total.items())}


def _exploding(summary: Mapping[str, Any], scalars: Mapping[str, Series]) -> List[Finding]:
    total = _total_grad_norm(scalars)
    finite = {s: v for s, v in total.items() if math.isfinite(v)}
    if len(finite) < 2:
        return []
    steps = list(finite)
    first_step, first = steps[0], finite[steps[0]]
    peak_step = max(steps[1:], key=finite.get)
    peak = finite[peak_step]
    if first <= 0 or peak / first < EXPLODING_GROWTH:
        return []
    norms = tags.series(scalars, tags.GRAD_NORM)
    largest = max(norms, key=lambda name: max((v for s, v in norms[name] if s == peak_step), default=0.0))
    return [Finding(
        "exploding-gradient", "warning",
        f"the total gradient norm grew {peak / first:.0f}x, from {_fmt(first)} at step {first_step} to "
        f"{_fmt(peak)} at step {peak_step}; largest at {largest}",
        {"first_step": first_step, "first_total_grad_norm": first, "peak_step": peak_step,
         "peak_total_grad_norm": peak, "growth": peak / first, "largest_parameter": largest,
         "threshold_growth": EXPLODING_GROWTH, "total_grad_norm": finite},
        cause="too large a learning rate, or weights growing so that each layer multiplies the gradient by more "
              "than 1 on its way back",
        fix="lower the learning rate, clip the gradient norm (torch.nn.utils.clip_grad_norm_), or normalise layers")]


def _loss_clipping(scan: Mapping[str, Any]) -> List[Finding]:
    zero, pairs = int(scan.get("all_zero", 0)), int(scan.get("pairs", 0))
    if zero == 0 or pairs == 0:
        return []
    eps = scan.get("eps", 1e-7)
    evidence = {k: scan[k] for k in ("pairs", "all_zero", "all_zero_fraction", "clipped", "eps", "min_target_prob",
                                     "all_zero_iff_target_prob_clipped", "all_zero_but_not_clipped",
                                     "clipped_but_not_all_zero", "step", "epoch") if k in scan}
    explained = scan.get("all_zero_iff_target_prob_clipped") or scan.get("all_zero_but_not_clipped", 1) == 0
    if not explained:
        return [Finding(
            "exact-zero-gradient", "warning",
            f"{zero} of {pairs} (input, target) pairs have an exactly-zero gradient for every weight, and the "
            f"loss's probability clip does not explain all of them ({scan.get('all_zero_but_not_clipped', '?')} "
            f"are not clipped)", evidence,
            cause="something else between the loss and the weights has zero derivative for those pairs",
            fix="look at the per-layer gradient norms of the pair scan to see where the gradient stops")]
    return [Finding(
        "loss-clipping-zero-grad", "warning",
        f"{zero} of {pairs} (input, target) pairs ({100 * zero / pairs:.1f}%) have an exactly-zero gradient for "
        f"every weight, and they are exactly the pairs whose target probability is < {eps:g} or > 1 - {eps:g} "
        f"(smallest {_fmt(scan.get('min_target_prob'))}): the loss clips probabilities there",
        evidence,
        cause=f"the loss clips probabilities to [{eps:g}, 1 - {eps:g}] before the log (Keras 2's "
              "categorical_crossentropy); the clip's derivative is 0 outside that range, so the most wrong "
              "predictions (and the most confident right ones) send back no gradient at all",
        fix="compute the loss from logits: train.py --loss logits (Keras: from_logits=True on a linear output, "
            "or Keras 3's fit, which does it behind a softmax); torch.nn.functional.cross_entropy on logits")]


def _vanishing(summary: Mapping[str, Any], scalars: Mapping[str, Series], order: List[str]) -> List[Finding]:
    evidence: Dict[str, Any] = {}
    fired: List[str] = []
    grad_norms = tags.series(scalars, tags.GRAD_NORM)
    norms = {name: _values(grad_norms[name]) for name in order if name in grad_norms}
    layers = [n for n in order if n in norms and norms[n]]
    if len(layers) >= 2:
        median = {n: statistics.median(norms[n]) for n in layers}
        first, last = median[layers[0]], median[layers[-1]]
        ratio = first / last if last > 0 else float("inf")
        steps = [s for s, _ in grad_norms[layers[0]]]
        evidence.update(layers=layers, median_grad_norm=[median[n] for n in layers],
                        grad_norm_ratio_to_last=[median[n] / last if last > 0 else None for n in layers],
                        first_to_last_grad_norm_ratio=ratio, logged_steps=[steps[0], steps[-1], len(steps)],
                        falls_towards_input=all(median[a] <= median[b] for a, b in zip(layers, layers[1:])))
        if ratio < AUTOTRAINER_VANISH_RATIO and first < AUTOTRAINER_VANISH_FIRST_NORM:
            fired.append("autotrainer")
        if ratio < VANISH_GRAD_RATIO:
            fired.append("grad_norm_ratio")
    change = summary.get("weight_change") or {}
    if change.get("mean_abs_dw") and len(change["mean_abs_dw"]) >= 2 and change["mean_abs_dw"][-1] > 0:
        dw = change["mean_abs_dw"]
        evidence.update(weight_change_layers=change["layers"], mean_abs_dw=dw,
                        first_to_last_dw_ratio=dw[0] / dw[-1], weight_change_steps=change.get("steps"))
        if dw[0] / dw[-1] < VANISH_DW_RATIO:
            fired.append("dw_ratio")
    if not fired:
        return []
    evidence["rules"] = fired
    evidence["thresholds"] = {"grad_norm_ratio": VANISH_GRAD_RATIO, "dw_ratio": VANISH_DW_RATIO,
                              "autotrainer_ratio": AUTOTRAINER_VANISH_RATIO,
                              "autotrainer_first_norm": AUTOTRAINER_VANISH_FIRST_NORM}
    parts = []
    if "median_grad_norm" in evidence:
        per = ", ".join(f"{n} {_fmt(v)}" for n, v in zip(evidence["layers"], evidence["median_grad_norm"]))
        parts.append(f"gradient norm per layer, input first (median over logged steps): {per}; first/last "
                     f"{evidence['first_to_last_grad_norm_ratio']:.2g} "
                     f"({_orders(1 / evidence['first_to_last_grad_norm_ratio'])} smaller)")
    if "mean_abs_dw" in evidence:
        per = ", ".join(_fmt(v) for v in evidence["mean_abs_dw"])
        parts.append(f"mean |dW| per step: {per}; first/last {evidence['first_to_last_dw_ratio']:.2g}")
    severity = "error" if "autotrainer" in fired else "warning"
    return [Finding(
        "vanishing-gradient", severity,
        "the gradient shrinks by orders of magnitude on its way to the input: " + "; ".join(parts), evidence,
        cause="each layer multiplies the gradient on its way back by its activation's derivative (a sigmoid's is "
              "at most 0.25) and its weights, so the first layers barely learn",
        fix="use ReLU-family activations, an initialisation matched to the activation (He/Glorot), "
            "normalisation layers or residual connections")]


def _frozen_by_dead_input(summary: Mapping[str, Any]) -> List[Finding]:
    frozen, dead = summary.get("frozen") or {}, summary.get("dead_inputs") or {}
    if "frozen_first_layer_inputs" not in frozen or "always_zero" not in dead:
        return []
    rows, zero = set(frozen["frozen_first_layer_inputs"]), set(dead["always_zero"])
    both = rows & zero
    if not both:
        return []
    relation = ("equal" if rows == zero else "subset" if rows < zero else "superset" if rows > zero else "other")
    units = (summary.get("dead_units") or {}).get("layers", {})
    evidence = {"first_layer": frozen.get("first_layer"), "inputs": frozen.get("first_layer_inputs"),
                "examples_seen": dead.get("examples"), "always_zero_inputs": len(zero),
                "frozen_inputs": len(rows), "frozen_and_always_zero": len(both), "relation": relation,
                "frozen_not_explained": sorted(rows - zero), "always_zero_but_changed": sorted(zero - rows),
                "input_indices": sorted(both),
                "dead_relu_units": {name: layer["dead"] for name, layer in units.items()}}
    if dead.get("feature_kind") == "token":
        message = (f"{len(zero)} of {evidence['inputs']} tokens of the vocabulary never occurred in the "
                   f"{evidence['examples_seen']} training sequences seen, and the embedding rows of {len(both)} of "
                   f"them ({evidence['first_layer']}) never changed (frozen rows vs unseen tokens: {relation}); "
                   f"they keep their initial values")
        cause = ("an embedding row gets a gradient only from the positions where its token occurs, so the rows "
                 "of tokens absent from the training data are never updated")
        fix = ("usually harmless; if those tokens can occur later (at evaluation), train on data that contains "
               "them, tie or share their rows, or shrink the vocabulary")
    else:
        message = (f"{len(zero)} of {evidence['inputs']} inputs were 0 in every one of the "
                   f"{evidence['examples_seen']} training examples seen, and the weights of {evidence['first_layer']} "
                   f"from {len(both)} of them never changed (frozen inputs vs always-zero inputs: {relation}); these "
                   f"are not dead ReLUs: the weights are stuck because what they multiply is always 0")
        cause = ("dL/dW[j, i] = x_i * dL/dy_j, which is exactly 0 when input i is 0 in every example, so the "
                 "optimizer's update of those weights is exactly 0 and they keep their initial values")
        fix = ("usually harmless on data like the training set; drop constant inputs, or standardise them, if "
               "those weights' random initial values must not act on inputs that are nonzero elsewhere")
    evidence["feature_kind"] = dead.get("feature_kind", "input")
    return [Finding("frozen-by-dead-input", "info", message, evidence, cause=cause, fix=fix)]


def _dead_relu(summary: Mapping[str, Any]) -> List[Finding]:
    layers = (summary.get("dead_units") or {}).get("layers", {})
    dead = {name: l for name, l in layers.items() if l["dead"] > 0}
    if not dead:
        return []
    worst = max(dead, key=lambda n: dead[n]["dead"] / dead[n]["units"])
    fraction = dead[worst]["dead"] / dead[worst]["units"]
    severity = "warning" if fraction >= DEAD_RELU_WARN_FRACTION else "info"
    per = ", ".join(f"{name} {l['dead']} of {l['units']}" for name, l in dead.items())
    return [Finding(
        "dead-relu", severity,
        f"ReLU units whose output was 0 for every training example seen: {per} "
        f"(worst {worst}, {100 * fraction:.1f}%); they pass no gradient back",
        {"layers": {name: {k: l[k] for k in ("units", "dead", "examples", "dead_units")} for name, l in dead.items()},
         "worst_layer": worst, "worst_fraction": fraction, "threshold_warning": DEAD_RELU_WARN_FRACTION},
        cause="the unit's pre-activation is negative for every input (a large negative bias or a step that "
              "pushed it there), so the ReLU's derivative is 0 everywhere",
        fix="lower the learning rate, use LeakyReLU/GELU, or initialise with He init and small positive biases")]


def _saturation(scalars: Mapping[str, Series]) -> List[Finding]:
    saturated = tags.series(scalars, tags.ACTIVATION_SATURATED_FRACTION)
    median = {name: statistics.median(_values(s)) for name, s in saturated.items() if s}
    hot = {name: v for name, v in median.items() if v >= SATURATION_WARN_FRACTION}
    if not hot:
        return []
    per = ", ".join(f"{name} {100 * v:.0f}%" for name, v in hot.items())
    steps = {name: [s for s, _ in saturated[name]] for name in hot}
    return [Finding(
        "saturation", "warning",
        f"sigmoid/tanh outputs within 1e-3 of their bounds (median over logged steps): {per}; their derivative "
        f"is nearly 0 there, so little gradient passes",
        {"median_saturated_fraction": hot, "all_layers": median, "logged_steps": steps,
         "threshold": SATURATION_WARN_FRACTION},
        cause="pre-activations of large magnitude: weights initialised or grown too large for a squashing "
              "activation, or unnormalised inputs",
        fix="initialise with Glorot/Xavier, normalise inputs or pre-activations, or use ReLU-family activations")]


def _update_ratio_within(summary: Mapping[str, Any]) -> List[Finding]:
    table = summary.get("update_ratio") or {}
    found = _spread(table)
    if found is None or found[1] < UPDATE_RATIO_SPREAD:
        return []
    fast, spread, slow = found
    ratios = dict(zip(table["layers"], table["mean_update_ratio"]))
    return [Finding(
        "update-ratio-imbalance", "warning",
        f"mean ||update||/||weight|| per step is {_fmt(ratios[fast])} for {fast} but {_fmt(ratios[slow])} for "
        f"{slow}: {spread:.0f}x apart ({_orders(spread)}); {slow} learns that much slower relative to its size",
        {"mean_update_ratio": ratios, "mean_update_norm": dict(zip(table["layers"], table["mean_update_norm"])),
         "mean_grad_norm": dict(zip(table["layers"], table["mean_grad_norm"])), "fastest": fast, "slowest": slow,
         "spread": spread, "steps": table.get("steps"), "threshold": UPDATE_RATIO_SPREAD},
        cause="layers whose weights differ in scale by orders of magnitude, under an optimizer whose step size "
              "does not follow the weights' scale (Adam, RMSprop and Adadelta step about lr per weight)",
        fix="keep weights of order 1 (constant scales in the initialisation rather than in the forward pass), or "
            "give layers learning rates proportional to their weights' size")]
