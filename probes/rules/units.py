"""Rules on what units and weights do: dead ReLUs (since attach, or died lately), saturated
squashing layers, first-layer weights frozen by inputs that are always zero."""
from __future__ import annotations

import statistics
from typing import Any, Dict, List

from .. import tags
from ..findings import Finding
from ..structure import below
from ..thresholds import ACTIVE_BEFORE, ACTIVE_LOGS, DEAD_LAYER_FRACTION, DEAD_RELU_WARN_FRACTION, DIED_RELU_WARN_FRACTION, \
    SATURATION_WARN_FRACTION
from .common import RunFacts, values


def dead_relu(run: RunFacts) -> List[Finding]:
    layers = (run.summary.get("dead_units") or {}).get("layers", {})
    rows: Dict[str, Dict[str, Any]] = {}
    for name, l in layers.items():
        units = l["units"] or 1
        died = [u for u in l.get("fired_then_silent", []) if u[1] >= ACTIVE_BEFORE and u[3] >= ACTIVE_LOGS]
        if l["dead"] or died:
            rows[name] = {"units": l["units"], "dead": l["dead"], "examples": l["examples"],
                          "dead_fraction": l["dead"] / units, "died": len(died), "died_fraction": len(died) / units,
                          "recent_dead": l.get("recent_dead"), "recent_window": l.get("recent_window"),
                          "silent_since": max((u[2] for u in died), default=None), "dead_units": l["dead_units"],
                          "died_units": [u[0] for u in died]}
    if not rows:
        return []
    worst = max(rows, key=lambda n: max(rows[n]["dead_fraction"], rows[n]["died_fraction"]))
    w = rows[worst]
    warn = w["dead_fraction"] >= DEAD_RELU_WARN_FRACTION or w["died_fraction"] >= DIED_RELU_WARN_FRACTION
    parts = []
    for name, r in rows.items():
        text = f"{name}: {r['dead']} of {r['units']} never fired"
        if r["died"]:
            start, end, logs = r["recent_window"]
            text += (f", {r['died']} more fired in at least {100 * ACTIVE_BEFORE:.0f}% of the logging intervals "
                     f"until they fell silent on every training example (by step {r['silent_since']}; the last "
                     f"{logs} intervals, to step {end}, included): they died during training")
        parts.append(text)
    dead_layers = [n for n, r in rows.items()
                   if max(r["dead_fraction"], (r["recent_dead"] or 0) / (r["units"] or 1)) >= DEAD_LAYER_FRACTION]
    below_dead = sorted({w_ for n in dead_layers for w_ in below(run.structure, n)},
                        key=lambda w_: run.order.index(w_) if w_ in run.order else 0)
    died_at = [rows[n]["silent_since"] for n in rows if rows[n]["died"]]
    evidence = {"layers": rows, "worst_layer": worst, "worst_fraction": w["dead_fraction"],
                "worst_died_fraction": w["died_fraction"], "dead_layers": dead_layers,
                "weights_below_dead_layers": below_dead, "died_at_step": max(died_at) if died_at else None,
                "first_seen_step": max(died_at) if died_at and not w["dead"] else 0,
                "threshold_warning": DEAD_RELU_WARN_FRACTION, "threshold_died": DIED_RELU_WARN_FRACTION}
    message = "ReLU units whose output was 0 for every training example: " + "; ".join(parts) + \
        f" (worst {worst}, {100 * max(w['dead_fraction'], w['died_fraction']):.1f}%); they pass no gradient back"
    if dead_layers:
        message += (f". Dead layer{'s' if len(dead_layers) > 1 else ''} {', '.join(dead_layers)}: the weights below "
                    f"({', '.join(below_dead) or 'none'}) get no gradient through it")
    return [Finding(
        "dead-relu", "warning" if warn else "info", message, evidence,
        cause="the units' pre-activations are negative for every input (a large negative bias, or a step too large "
              "that pushed them there), so the ReLU's derivative is 0 everywhere and nothing brings them back",
        fix="lower the learning rate (or warm it up), use LeakyReLU/GELU, or initialise with He init and small "
            "positive biases")]


def saturation(run: RunFacts) -> List[Finding]:
    """Hidden squashing layers only: a saturated output layer is a confident classifier."""
    saturated = tags.series(run.scalars, tags.ACTIVATION_SATURATED_FRACTION)
    kinds, output = run.layer_types(), run.output_layer()
    hidden = {n: s for n, s in saturated.items()
              if s and tags.module_name(n) != output and "softmax" not in kinds.get(tags.module_name(n), "").lower()}
    median = {name: statistics.median(values(s)) for name, s in hidden.items()}
    hot = {name: v for name, v in median.items() if v >= SATURATION_WARN_FRACTION}
    if not hot:
        return []
    per = ", ".join(f"{name} {100 * v:.0f}%" for name, v in hot.items())
    steps = {name: [s for s, _ in saturated[name]] for name in hot}
    first = min(next((s for s, v in saturated[name] if v >= SATURATION_WARN_FRACTION), steps[name][0]) for name in hot)
    return [Finding(
        "saturation", "warning",
        f"outputs of hidden sigmoid/tanh layers within 1e-3 of their bounds (median over logged steps): {per}; "
        f"their derivative is nearly 0 there, so little gradient passes",
        {"median_saturated_fraction": hot, "all_layers": median, "logged_steps": steps, "first_seen_step": first,
         "threshold": SATURATION_WARN_FRACTION},
        cause="pre-activations of large magnitude: weights initialised or grown too large for a squashing "
              "activation, or unnormalised inputs",
        fix="initialise with Glorot/Xavier, normalise inputs or pre-activations, or use ReLU-family activations")]


def frozen_by_dead_input(run: RunFacts) -> List[Finding]:
    frozen, dead = run.summary.get("frozen") or {}, run.summary.get("dead_inputs") or {}
    if "frozen_first_layer_inputs" not in frozen or "always_zero" not in dead:
        return []
    rows, zero = set(frozen["frozen_first_layer_inputs"]), set(dead["always_zero"])
    both = rows & zero
    if not both:
        return []
    relation = ("equal" if rows == zero else "subset" if rows < zero else "superset" if rows > zero else "other")
    units = (run.summary.get("dead_units") or {}).get("layers", {})
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
