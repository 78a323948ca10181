"""Rules on how fast layers learn relative to their own size: ||update|| / ||weight||."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..findings import Finding
from ..thresholds import UPDATE_RATIO_SPREAD
from .common import RunFacts, fmt, orders


def layer_ratios(table: Mapping[str, Any], skip: Sequence[str] = ()) -> Dict[str, float]:
    """Per weight matrix, how far a step moves it relative to its size: mean ||update|| over mean
    ||weight|| where the summary has both (a zero-initialised weight has no ratio at its first
    step), else the mean of the per-step ratios; layers in ``skip`` left out."""
    layers = table.get("layers", [])
    if table.get("mean_weight_norm"):
        ratios = {k: u / w for k, u, w in zip(layers, table["mean_update_norm"], table["mean_weight_norm"]) if w > 0}
    else:
        ratios = dict(zip(layers, table.get("mean_update_ratio", [])))
    return {k: v for k, v in ratios.items() if v > 0 and math.isfinite(v) and k not in skip}


def spread(table: Mapping[str, Any], skip: Sequence[str] = ()) -> Optional[Tuple[str, float, str]]:
    """(fastest layer, max/min of :func:`layer_ratios`, slowest layer) of an UpdateRatio summary."""
    ratios = layer_ratios(table, skip)
    if len(ratios) < 2:
        return None
    fast, slow = max(ratios, key=ratios.get), min(ratios, key=ratios.get)
    return fast, ratios[fast] / ratios[slow], slow


def embeddings(run: RunFacts) -> List[str]:
    """Weights of embedding layers: a step moves only the rows of the tokens in the batch, and
    their usual initialisation is N(0, 1), so they move slower relative to their size by design."""
    return [p for name, kind, params in run.structure.get("layers", []) if "Embedding" in kind for p in params]


def update_ratio_within(run: RunFacts) -> List[Finding]:
    table = run.summary.get("update_ratio") or {}
    skip = embeddings(run)
    found = spread(table, skip)
    if found is None or found[1] < UPDATE_RATIO_SPREAD:
        return []
    fast, ratio, slow = found
    ratios = layer_ratios(table, skip)
    return [Finding(
        "update-ratio-imbalance", "warning",
        f"||update||/||weight|| per step (means over {table.get('steps')} steps) is {fmt(ratios[fast])} for {fast} "
        f"but {fmt(ratios[slow])} for "
        f"{slow}: {ratio:.0f}x apart ({orders(ratio)}); {slow} learns that much slower relative to its size",
        {"mean_update_ratio": ratios, "mean_update_norm": dict(zip(table["layers"], table["mean_update_norm"])),
         "mean_grad_norm": dict(zip(table["layers"], table["mean_grad_norm"])), "fastest": fast, "slowest": slow,
         "spread": ratio, "steps": table.get("steps"), "threshold": UPDATE_RATIO_SPREAD, "left_out": skip,
         "first_seen_step": 0},
        cause="layers whose weights differ in scale by orders of magnitude, under an optimizer whose step size "
              "does not follow the weights' scale (Adam, RMSprop and Adadelta step about lr per weight)",
        fix="keep weights of order 1 (constant scales in the initialisation rather than in the forward pass), or "
            "give layers learning rates proportional to their weights' size")]


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
        s = max(by_variant.values()) / min(by_variant.values())
        if worst is None or s > worst[1]:
            worst = (layer, s, by_variant)
    if worst is None or worst[1] < UPDATE_RATIO_SPREAD:
        return []
    layer, s, by_variant = worst
    fast, slow = max(by_variant, key=by_variant.get), min(by_variant, key=by_variant.get)
    grads = {label: dict(zip(t["layers"], t["mean_grad_norm"])).get(layer) for label, t in tables.items()}
    updates = {label: dict(zip(t["layers"], t["mean_update_norm"])).get(layer) for label, t in tables.items()}
    within = {label: spread(t) for label, t in tables.items()}
    steps = {label: t.get("steps") for label, t in tables.items()}
    return [Finding(
        "update-ratio-imbalance", "warning",
        f"mean ||update||/||weight|| of {layer} is {fmt(by_variant[fast])} in {fast} but {fmt(by_variant[slow])} "
        f"in {slow}: {s:.0f}x apart ({orders(s)}) for the same function, though ||update|| is alike "
        f"({', '.join(f'{k} {fmt(v)}' for k, v in updates.items())}); relative to its weights, {slow} learns "
        f"{s:.0f}x slower per step",
        {"layer": layer, "mean_update_ratio": by_variant, "mean_update_norm": updates, "mean_grad_norm": grads,
         "spread": s, "steps": steps, "threshold": UPDATE_RATIO_SPREAD,
         "within_variant_spread": {k: v[1] for k, v in within.items() if v},
         "per_variant_layers": {label: dict(zip(t["layers"], t["mean_update_ratio"])) for label, t in tables.items()}},
        cause="the weights of the slow variant are larger for the same function (a constant scale outside the "
              "layer), and an adaptive optimizer (Adam, RMSprop, Adadelta) makes each step about lr per weight "
              "whatever the gradient's scale, so the same step is a smaller relative change",
        fix="parameterise the layers so weights are of order 1 (move constant scales into the initialisation, "
            "not into the forward pass), or scale the learning rate per layer with the weights' size")]
