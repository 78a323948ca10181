"""Rules on the loss: non-finite values, a curve that does not go down or does not settle, and
the exactly-zero gradients of a loss that clips probabilities (from a pair scan)."""
from __future__ import annotations

import math
import statistics
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .. import tags
from ..findings import Finding
from ..thresholds import CHANCE_TOLERANCE, LOSS_MIN_WINDOWS, LOSS_POINTS, NOT_DECREASING_FRACTION, UNSTABLE_RISE
from .common import RunFacts, fmt

Window = Tuple[int, float, float, float]  # (last step, mean, min, max) of the losses between two logs


def loss_windows(run: RunFacts) -> List[Window]:
    """The loss curve as one point per logged window.

    A monitor keeps each window's mean, min and max (``train/loss_window_*``); a sink that kept
    every step's loss (``train/loss``) is cut at the logging steps (those of the gradient
    norms), or into 20 equal windows when there are none."""
    s = run.scalars
    if s.get(tags.LOSS_WINDOW_MEAN):
        return [(step, mean, lo, hi) for (step, mean), (_, lo), (_, hi)
                in zip(s[tags.LOSS_WINDOW_MEAN], s[tags.LOSS_WINDOW_MIN], s[tags.LOSS_WINDOW_MAX])]
    losses = sorted(s.get(tags.LOSS) or [])
    if not losses:
        return []
    logged = sorted({step for series in run.grad_norms().values() for step, _ in series})
    if len(logged) < 2:
        size = max(1, math.ceil(len(losses) / 20))
        logged = [losses[min(i + size, len(losses)) - 1][0] for i in range(0, len(losses), size)]
    windows, i = [], 0
    for end in logged:
        chunk = []
        while i < len(losses) and losses[i][0] <= end:
            chunk.append(float(losses[i][1]))
            i += 1
        if chunk:
            windows.append((end, sum(chunk) / len(chunk), min(chunk), max(chunk)))
    return windows


def coarse(windows: List[Window], points: int = LOSS_POINTS) -> List[Window]:
    """At most ``points`` points: consecutive windows merged (mean of means, min, max, last step),
    so that a run logged every step is judged on a curve as smooth as one logged every 10."""
    size = max(1, math.ceil(len(windows) / points))
    if size == 1:
        return list(windows)
    out = []
    for i in range(0, len(windows), size):
        chunk = windows[i:i + size]
        out.append((chunk[-1][0], statistics.fmean(w[1] for w in chunk), min(w[2] for w in chunk),
                    max(w[3] for w in chunk)))
    return out


def judged_windows(run: RunFacts) -> List[Window]:
    """The finite points of the loss curve the rules judge (:func:`coarse` of :func:`loss_windows`)."""
    return coarse([w for w in loss_windows(run) if math.isfinite(w[1])])


def non_finite(run: RunFacts) -> List[Finding]:
    event = run.summary.get("nonfinite")
    if event:
        evidence: Dict[str, Any] = {"step": event["step"], "where": event["where"], "name": event["name"]}
    else:
        first = None
        watched = {tags.LOSS: run.scalars.get(tags.LOSS, [])}
        for kind in (tags.GRAD_NORM, tags.OUTPUT_GRAD_NORM):
            watched.update({tags.tag(kind, name): s for name, s in tags.series(run.scalars, kind).items()})
        for tag, series in watched.items():
            for step, value in series:
                if not math.isfinite(value):
                    if first is None or step < first[0]:
                        first = (step, tag, value)
                    break
        if first is None:
            return []
        evidence = {"step": first[0], "where": "scalar", "name": first[1], "value": str(first[2])}
    evidence["first_seen_step"] = evidence["step"]
    evidence["at_output"] = evidence["where"] in ("loss", "scalar") or (
        evidence["where"] == "activation" and evidence["name"] == run.output_layer())
    return [Finding(
        "non-finite", "error",
        f"NaN/Inf first seen at step {evidence['step']} in {evidence['where']} {evidence['name']}",
        evidence,
        cause="an overflow (too large a learning rate, exploding gradients) or an invalid operation "
              "(log of 0 or of a negative number, division by 0) in the model or the loss",
        fix="lower the learning rate, clip gradients, or compute the loss from logits; look at the named layer")]


def _ends(means: List[float]) -> Tuple[float, float, int]:
    """Mean of the first and of the last fifth of the windows (at least one each), and the count."""
    k = max(1, len(means) // 5)
    return statistics.fmean(means[:k]), statistics.fmean(means[-k:]), k


def chance_level(loss: float, units: Optional[int]) -> Optional[float]:
    """ln(units) if ``loss`` is within CHANCE_TOLERANCE of it: a classifier that learned nothing."""
    if not units or units < 2:
        return None
    chance = math.log(units)
    return chance if abs(loss - chance) <= CHANCE_TOLERANCE * chance else None


def not_decreasing(run: RunFacts) -> List[Finding]:
    windows = judged_windows(run)
    if len(windows) < LOSS_MIN_WINDOWS:
        return []
    means = [w[1] for w in windows]
    start, end, k = _ends(means)
    if start <= 0 or (start - end) / start >= NOT_DECREASING_FRACTION:
        return []
    units = (run.summary.get("outputs") or {}).get("units")
    chance = chance_level(end, units)
    at_chance = f", at chance level for {units} classes (ln {units} = {chance:.3g})" if chance else ""
    drop = 100 * (start - end) / start
    evidence = {"first_windows_mean": start, "last_windows_mean": end, "windows_each": k, "windows": len(windows),
                "relative_decrease": (start - end) / start, "steps": [windows[0][0], windows[-1][0]],
                "output_units": units, "chance_level": chance, "first_seen_step": windows[-k][0],
                "threshold": NOT_DECREASING_FRACTION, "loss_windows": [(w[0], w[1]) for w in windows]}
    return [Finding(
        "loss-not-decreasing", "warning",
        f"the loss did not go down: mean {fmt(start)} over the first {k} of {len(windows)} logged windows, "
        f"{fmt(end)} over the last {k} ({drop:+.1f}% lower; steps {windows[0][0]}-{windows[-1][0]}){at_chance}",
        evidence,
        cause="nothing reaches the weights (zero or vanishing gradients, dead units), the learning rate is far too "
              "small, or the inputs carry no information about the targets (constant inputs, shuffled labels)",
        fix="see the findings listed with it; else raise the learning rate by 10x, check that the optimizer "
            "holds the model's parameters and that the labels match the inputs")]


def unstable(run: RunFacts) -> List[Finding]:
    windows = judged_windows(run)
    if len(windows) < LOSS_MIN_WINDOWS:
        return []
    first = windows[0][1]
    if first <= 0:
        return []
    rise, low, at, low_at = 0.0, windows[0][1], None, None
    lowest = (windows[0][0], windows[0][1])
    rises = 0
    for step, mean, _, _ in windows[1:]:
        if mean - low > rise:
            rise, at, low_at = mean - low, step, lowest
        if (mean - low) / first >= UNSTABLE_RISE:
            rises += 1
        if mean < low:
            low, lowest = mean, (step, mean)
    if rise / first < UNSTABLE_RISE:
        return []
    means = [w[1] for w in windows]
    table = run.summary.get("update_ratio") or {}
    steps = dict(zip(table.get("layers", []), table.get("max_update_ratio", [])))
    largest = max(steps, key=steps.get) if steps else None
    step_note = (f"; the largest step moved {largest} by {fmt(steps[largest])} of its norm (step "
                 f"{dict(zip(table['layers'], table['max_update_ratio_step']))[largest]})" if largest else "")
    evidence = {"largest_rise": rise, "relative_rise": rise / first, "rise_step": at, "low_before": low_at,
                "first_loss": first, "windows_above_threshold": rises, "windows": len(windows),
                "first_seen_step": at, "final_loss": means[-1], "threshold": UNSTABLE_RISE,
                "loss_windows": [(w[0], w[1]) for w in windows],
                "max_update_ratio": steps.get(largest) if largest else None, "max_update_ratio_layer": largest}
    return [Finding(
        "unstable-loss", "warning",
        f"the loss does not settle: after falling to {fmt(low_at[1])} at step {low_at[0]} it rose to "
        f"{fmt(low_at[1] + rise)} at step {at}, {100 * rise / first:.0f}% of the first logged loss ({fmt(first)}); "
        f"{rises} of {len(windows)} points of the curve sit that far above the lowest loss before them{step_note}",
        evidence,
        cause="steps too large for the curvature of the loss: a learning rate too high (or no warm-up), no "
              "gradient clipping, or unnormalised inputs",
        fix="lower the learning rate (try 3-10x lower), add warm-up or gradient clipping "
            "(torch.nn.utils.clip_grad_norm_), normalise the inputs")]


def loss_clipping(scan: Mapping[str, Any]) -> List[Finding]:
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
        f"(smallest {fmt(scan.get('min_target_prob'))}): the loss clips probabilities there",
        evidence,
        cause=f"the loss clips probabilities to [{eps:g}, 1 - {eps:g}] before the log (Keras 2's "
              "categorical_crossentropy); the clip's derivative is 0 outside that range, so the most wrong "
              "predictions (and the most confident right ones) send back no gradient at all",
        fix="compute the loss from logits: train.py --loss logits (Keras: from_logits=True on a linear output, "
            "or Keras 3's fit, which does it behind a softmax); torch.nn.functional.cross_entropy on logits")]
