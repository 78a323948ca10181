"""Diagnosis: rules over the probes' statistics that say, with evidence, what is wrong.

Each rule reads what the probes already measured — ``Monitor.summary()`` (per probe), the
scalars a monitor kept (``grad_norm/<param>``, ``activation_saturated_fraction/<layer>``,
``train/loss`` ...), the model's layout (sizes and order of its layers) and, optionally, a
pair scan's facts and the findings of :func:`probes.check` before training — and returns
:class:`Finding` objects with a stable ``id``, a severity, a message with the numbers, the
evidence (numbers, layer and parameter names, steps, the step it was first seen), the likely
cause and a fix. Linked findings are put under their cause (:func:`probes.findings.link`).
Nothing here knows about particular models: give it any model's statistics.

The rules live in :mod:`probes.rules`, their thresholds, each with its measured margins, in
:mod:`probes.thresholds` (re-exported here).

Ids: ``vanishing-gradient``, ``exploding-gradient``, ``zero-gradient``, ``dead-relu``,
``saturation``, ``unstable-loss``, ``loss-not-decreasing``, ``non-finite``, ``abnormal-input``,
``improper-output-activation``, ``improper-loss``, ``loss-clipping-zero-grad`` (and
``exact-zero-gradient``), ``frozen-by-dead-input``, ``update-ratio-imbalance``.
"""
from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence

from torch import nn

from .findings import SEVERITIES, Finding, at_least, link, report
from .rules import gradients, io, loss, units, updates
from .rules.common import RunFacts, Series
from .rules.updates import compare_update_ratios
from .structure import describe
from .thresholds import *  # noqa: F401,F403 - the thresholds, where they were always read

__all__ = ["SEVERITIES", "Finding", "at_least", "compare_update_ratios", "diagnose", "link", "report"]

#: The rules in the order their findings are listed (causes before what they explain is left to link).
RULES = (io.abnormal_input, io.output_activation, io.improper_loss, loss.non_finite, gradients.exploding,
         gradients.zero_gradient, gradients.vanishing, units.frozen_by_dead_input, units.dead_relu,
         units.saturation, loss.unstable, loss.not_decreasing, updates.update_ratio_within)


def diagnose(summary: Optional[Mapping[str, Any]] = None, *, scalars: Optional[Mapping[str, Series]] = None,
             model: Optional[nn.Module] = None, pair_scan: Optional[Mapping[str, Any]] = None,
             weight_order: Optional[Sequence[str]] = None, structure: Optional[Mapping[str, Any]] = None,
             checks: Sequence[Finding] = ()) -> List[Finding]:
    """Run every rule on one training run's statistics.

    Args:
        summary: ``Monitor.summary()``: ``{probe name: probe.summary()}``.
        scalars: ``MemorySink.scalars`` of the run (or ``Monitor.kept``): ``{tag: [(step, value), ...]}``.
        model: the trained model, for the order of its weight matrices (input first) and their
            sizes; without it ``structure`` (:func:`probes.structure.describe`, what a monitor
            keeps), else ``weight_order`` (names), else the order of the WeightChange /
            UpdateRatio summaries is used, and gradients are compared by whole-tensor norms.
        pair_scan: facts of a pair scan against a clipping loss: ``pairs``, ``all_zero``,
            ``clipped``, ``all_zero_iff_target_prob_clipped``, ``eps`` (and optionally
            ``min_target_prob``, ``all_zero_but_not_clipped``, ``step``).
        checks: findings of :func:`probes.check` before training: listed (and linked) with the
            rest; a rule that finds the same again during training adds its evidence to them.
    """
    summary, scalars = dict(summary or {}), dict(scalars or {})
    layout = dict(describe(model) if model is not None else structure or {})
    if weight_order and model is None:
        order = list(weight_order)
    elif layout.get("weights"):
        order = list(layout["weights"])
    else:
        order = next((list(summary[p]["layers"]) for p in ("weight_change", "update_ratio")
                      if summary.get(p, {}).get("layers")), [])
    run = RunFacts(summary, scalars, order, layout)
    found: List[Finding] = []
    for rule in RULES:
        found += rule(run)
    if pair_scan:
        found += loss.loss_clipping(pair_scan)
    return link(merge(list(checks), found))


def merge(checks: List[Finding], found: List[Finding]) -> List[Finding]:
    """The findings of a check before training, then those of training; one of training with
    the id of a check's is folded into it (``evidence["in_training"]``)."""
    out = [Finding(c.id, c.severity, c.message, dict(c.evidence), c.cause, c.fix) for c in checks]
    by_id = {f.id: f for f in out}
    for f in found:
        if f.id in by_id:
            by_id[f.id].evidence["in_training"] = {"message": f.message, **f.evidence}
            if SEVERITIES.index(f.severity) > SEVERITIES.index(by_id[f.id].severity):
                by_id[f.id].severity = f.severity
        else:
            out.append(f)
    return out
