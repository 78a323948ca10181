"""Rules on what goes in and what comes out: abnormal input data, an output activation that
cannot work, a loss that does not fit the output (from :class:`probes.InputStats` and
:class:`probes.OutputStats`, or from :func:`probes.check`'s one batch)."""
from __future__ import annotations

from typing import Any, Dict, List

from ..findings import Finding
from ..thresholds import (CONSTANT_INPUT_FRACTION, FORM_FRACTION, INPUT_RMS_MAX, INPUT_RMS_MIN, LOGIT_ROW_SUM,
                          LOSS_FIT)
from .common import RunFacts, fmt


def abnormal_input(run: RunFacts) -> List[Finding]:
    x = run.summary.get("inputs") or {}
    if not x:
        return []
    problems: List[str] = []
    rms, biggest = x["rms"], x["max_abs"]
    if rms > INPUT_RMS_MAX:
        hint = " (raw 0-255 pixel values?)" if 100 <= biggest <= 255 and x["mean"] >= 0 else ""
        problems.append(f"far above unit scale: RMS {fmt(rms)}, largest magnitude {fmt(biggest)}, mean "
                        f"{fmt(x['mean'])}, standard deviation {fmt(x['std'])}{hint}")
    elif rms == 0:
        problems.append("every input value is 0")
    elif rms < INPUT_RMS_MIN:
        problems.append(f"far below unit scale: RMS {fmt(rms)}, largest magnitude {fmt(biggest)}")
    if x["constant_fraction"] >= CONSTANT_INPUT_FRACTION and rms > 0:
        problems.append(f"{100 * x['constant_fraction']:.0f}% of the features had one value in every example of "
                        f"the batch: the examples are nearly indistinguishable")
    if not problems:
        return []
    evidence = {k: x.get(k) for k in ("rms", "mean", "std", "max_abs", "constant_fraction", "shape", "logs", "steps")}
    evidence.update(first_seen_step=(x.get("steps") or [None])[0],
                    thresholds={"rms_max": INPUT_RMS_MAX, "rms_min": INPUT_RMS_MIN,
                                "constant_fraction": CONSTANT_INPUT_FRACTION})
    return [Finding(
        "abnormal-input", "warning", "the model's input is " + "; ".join(problems), evidence,
        cause="the data was not normalised (or a pipeline step was lost): layers initialised for inputs of unit "
              "scale then see pre-activations far too large (saturated sigmoids, huge first gradients) or too "
              "small; constant features carry no information",
        fix="standardise the inputs (subtract the training set's mean, divide by its standard deviation; for "
            "images x / 255 and transforms.Normalize), and check that the batches differ from each other")]


def _output(run: RunFacts) -> Dict[str, Any]:
    out = dict(run.summary.get("outputs") or {})
    return out if out.get("finite_logs") else {}


def _logit_loss(o: Dict[str, Any]) -> bool:
    """The loss applies its own softmax: its gradient sums to 0 per row and has that shape."""
    return bool(o.get("grad_logs")) and o.get("units", 0) >= 2 and o["grad_row_sum"] <= LOGIT_ROW_SUM and \
        o["logit_loss_fit"] >= LOSS_FIT and o["logit_loss_fit"] >= o["squared_error_fit"]


def _reads_target_only(o: Dict[str, Any]) -> bool:
    """The loss reads the target's output alone (nll_loss, -log p[target])."""
    return bool(o.get("grad_logs")) and o.get("units", 0) >= 2 and o["grad_single_entry_rows"] >= FORM_FRACTION


def _evidence(o: Dict[str, Any], **extra: Any) -> Dict[str, Any]:
    keep = ("units", "probability_rows", "log_probability_rows", "unit_interval", "zero_fraction", "negative_fraction",
            "one_fraction", "grad_row_sum", "grad_single_entry_rows", "logit_loss_fit", "squared_error_fit", "steps")
    ev = {k: o[k] for k in keep if k in o}
    ev.update(first_seen_step=(o.get("steps") or [None])[0], **extra)
    return ev


def output_activation(run: RunFacts) -> List[Finding]:
    o = _output(run)
    if not o:
        return []
    if o["units"] == 1 and (o["one_fraction"] >= FORM_FRACTION or o["zero_fraction"] >= FORM_FRACTION):
        value = "1" if o["one_fraction"] >= FORM_FRACTION else "0"
        return [Finding(
            "improper-output-activation", "error",
            f"the model's output has a single unit and it is exactly {value} for every example: a softmax "
            f"(log-softmax: 0) over one unit is the constant {value}, whatever the input, so its gradient is exactly "
            f"0 and no weight can learn", _evidence(o, kind="single-unit softmax"),
            cause="softmax normalises over the units of a row; over one unit it returns 1 (its log 0) identically",
            fix="for two classes use one unit with a sigmoid and BCEWithLogitsLoss (binary_cross_entropy_with_logits), "
                "or two units with softmax cross-entropy; do not apply softmax over a dimension of size 1")]
    relu_like = o["negative_fraction"] == 0 and o["zero_fraction"] > 0 and o["probability_rows"] < FORM_FRACTION
    if _reads_target_only(o) and o["log_probability_rows"] < FORM_FRACTION and o["probability_rows"] < FORM_FRACTION \
            and (relu_like or o["negative_fraction"] > 0 or o["unit_interval"] < FORM_FRACTION):
        kind = "ReLU" if relu_like else "linear (unbounded)"
        return [Finding(
            "improper-output-activation", "error",
            f"the loss reads only the target's output, as a (log-)probability, but the output is {kind}: "
            f"{100 * o['negative_fraction']:.0f}% of its values are negative, {100 * o['zero_fraction']:.0f}% exactly "
            f"0, {100 * (1 - o['unit_interval']):.0f}% outside [0, 1]; the log of 0 or of a negative number is "
            f"not finite, and nll_loss on an unbounded output falls without end",
            _evidence(o, kind=f"{kind} output under a probability loss"),
            cause="a loss for (log-)probabilities (nll_loss, -log p[target], BCELoss) on an output with no softmax, "
                  "log-softmax or sigmoid before it",
            fix="end the model with log_softmax for nll_loss, or drop the output activation and use "
                "cross_entropy (BCEWithLogitsLoss for binary targets), which take logits")]
    if relu_like and _logit_loss(o):
        return [Finding(
            "improper-output-activation", "warning",
            f"the logits pass through a ReLU: {100 * o['zero_fraction']:.0f}% of the outputs are exactly 0 and none "
            f"is negative, so a class's logit cannot go below 0 and a clamped logit gets no gradient",
            _evidence(o, kind="ReLU on logits"),
            cause="an activation after the last linear layer; cross-entropy expects unbounded logits",
            fix="remove the activation after the last layer")]
    return []


def improper_loss(run: RunFacts) -> List[Finding]:
    o = _output(run)
    if not o or not o.get("grad_logs") or o.get("units", 0) < 2:
        return []
    if o["probability_rows"] >= FORM_FRACTION and o["grad_row_sum"] <= LOGIT_ROW_SUM and \
            o["squared_error_fit"] >= LOSS_FIT and o["squared_error_fit"] > o["logit_loss_fit"]:
        return [Finding(
            "improper-loss", "warning",
            f"a squared error on softmax probabilities: every output row is a probability vector and the loss's "
            f"gradient is (p - y) (fit {o['squared_error_fit']:.3f}); it vanishes as p saturates, wrong or right",
            _evidence(o, kind="squared error on softmax"),
            cause="mean squared error against one-hot targets, through a softmax: its gradient is multiplied by the "
                  "softmax's Jacobian, tiny for confident outputs, so confident mistakes are corrected slowly",
            fix="drop the softmax and use cross_entropy on the logits (nn.CrossEntropyLoss)")]
    if not _logit_loss(o):
        return []
    if o["probability_rows"] >= FORM_FRACTION:
        what, severity = "softmax probabilities", "warning"
        harm = ("the loss applies softmax again, to values in [0, 1]: the predicted probabilities can then differ by "
                "a factor e at most, so the loss cannot go much below its starting value and the gradient is small")
    elif o["log_probability_rows"] >= FORM_FRACTION:
        what, severity = "log-softmax outputs", "info"
        harm = ("harmless (log_softmax of log-probabilities changes nothing) but redundant")
    elif o["unit_interval"] >= FORM_FRACTION:
        what, severity = "outputs squashed into [0, 1] (a sigmoid)", "warning"
        harm = "logits confined to [0, 1] cannot express confident predictions, so the loss stays high"
    else:
        return []
    return [Finding(
        "improper-loss", severity,
        f"{what} are fed to a loss that expects logits (its gradient at the output sums to "
        f"{o['grad_row_sum']:.1g} per row and fits softmax(output) - target at {o['logit_loss_fit']:.3f}): {harm}",
        _evidence(o, kind=f"{what} into a logits loss"),
        cause="nn.CrossEntropyLoss / F.cross_entropy apply log_softmax themselves; the model applies one too",
        fix="remove the softmax (or sigmoid) at the end of the model and give the loss the logits; use softmax only "
            "to read probabilities out, outside the loss")]
