"""The first question's measurement: which (test image, target) pairs get exactly-zero
gradients, and whether that is exactly where Keras 2's probability clip is flat.

Two scans of the same images: at each logging step only the flags (one forward pass, about
two training steps' time for 1,000 images on a CPU: ~2% at --log-every 100), enough to draw
the all-zero fraction as a curve; after each epoch the full scan with per-layer gradient
norms, whose facts go to summary.json."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from models.losses import KERAS_EPSILON, LOSSES, keras_probabilities, target_probability_clipped
from probes.layout import Category, chart
from probes.pair_scan import LossFn, pair_scan
from probes.records import HostHistogram, HostScalar
from probes.sinks import Sink

from .batches import to_float
from .distributed import Context, pair_scan_all_ranks
from .plots import zero_gradient_figure
from .run import Run
from .study import Study


def scan_zero_gradients(model: nn.Module, images: torch.Tensor, loss_fn: LossFn, norms_for: int = 0,
                        ctx: Optional[Context] = None) -> Dict[str, Any]:
    """Pair-scan ``images`` against all 10 targets; return the summary facts and the raw result.

    With ``ctx`` of several processes each rank scans its share and every rank gets all of it.
    """
    if ctx is None:
        result = pair_scan(model, images, loss_fn, norms_for=norms_for)
    else:
        result = pair_scan_all_ranks(ctx, model, images, loss_fn, norms_for=norms_for)
    target_prob = keras_probabilities(result.logits)  # the p Keras 2 clips: (N, 10)
    clipped = target_probability_clipped(target_prob)
    all_zero = result.all_zero
    facts = {
        "pairs": int(all_zero.numel()),
        "all_zero": int(all_zero.sum()),
        "all_zero_fraction": float(all_zero.float().mean()),
        "eps": KERAS_EPSILON,
        "clipped": int(clipped.sum()),
        "all_zero_iff_target_prob_clipped": bool(torch.equal(all_zero, clipped)),
        "all_zero_but_not_clipped": int((all_zero & ~clipped).sum()),
        "clipped_but_not_all_zero": int((clipped & ~all_zero).sum()),
        "min_target_prob": float(target_prob.min()),
        "flags_from_output_grad": result.flags_from_output_grad,
    }
    return {"facts": facts, "result": result, "target_prob": target_prob}


def describe(facts: Dict[str, Any], loss: str) -> str:
    """The scan's result in one plain sentence with its numbers."""
    pct = 100 * facts["all_zero_fraction"]
    head = f"{pct:.1f}% of {facts['pairs']} (image, target) pairs have exactly zero gradient"
    if facts["all_zero"] == 0:
        tail = (f"; smallest target probability {facts['min_target_prob']:.2g}"
                + (" (predictions not yet confident enough for the clip to bite)" if loss == "keras" else ""))
        return head + tail
    if facts["all_zero_iff_target_prob_clipped"]:
        return (head + "; every one has target probability < 1e-7 or > 1 - 1e-7, where Keras 2's "
                "categorical_crossentropy clips, and no other pair does" +
                ("; --loss logits removes them" if loss == "keras" else ""))
    return (head + f"; {facts['all_zero_but_not_clipped']} of them are not explained by the clip and "
            f"{facts['clipped_but_not_all_zero']} clipped pairs still have a gradient")


ALL_ZERO_FRACTION = "pair_scan/all_zero_fraction"
CLIPPED_FRACTION = "pair_scan/clipped_fraction"
LOG10_MIN_TARGET_PROB = "pair_scan/log10_min_target_prob"
LOG10_CLIP = "pair_scan/log10_clip"  # the clip's lower bound, a flat reference line beside the smallest probability


def scan_scalars(facts: Dict[str, Any], step: int) -> List[HostScalar]:
    """The scan's curves: the all-zero and clipped fractions (one line when the clip explains every
    zero) and log10 of the smallest target probability beside log10 of the clip, 1e-7."""
    return [HostScalar(ALL_ZERO_FRACTION, step, facts["all_zero_fraction"]),
            HostScalar(CLIPPED_FRACTION, step, facts["clipped"] / facts["pairs"]),
            HostScalar(LOG10_MIN_TARGET_PROB, step, math.log10(max(facts["min_target_prob"], 1e-45))),
            HostScalar(LOG10_CLIP, step, math.log10(facts["eps"]))]


HISTOGRAM_BUCKETS = 30


def host_histogram(tag: str, step: int, values: torch.Tensor) -> Optional[HostHistogram]:
    """``values`` binned on the host into equal buckets between their min and max, as a record any
    :class:`probes.sinks.Sink` takes (also one wrapped in another, which a writer call would bypass);
    None when no value is finite."""
    v = values.detach().flatten().to("cpu", torch.float64)
    v = v[torch.isfinite(v)]
    if not v.numel():
        return None
    low, high = float(v.min()), float(v.max())
    top = high if high > low else low + 1.0
    counts = torch.histc(v, bins=HISTOGRAM_BUCKETS, min=low, max=top)
    limits = torch.linspace(low, top, HISTOGRAM_BUCKETS + 1)[1:]
    return HostHistogram(tag, step, low, high, float(v.numel()), float(v.sum()), float((v * v).sum()),
                         limits.tolist(), counts.tolist())


def log_scan(sink: Sink, scan: Dict, step: int) -> None:
    """Pair-scan facts as scalars, the target-probability spread and per-layer norms as histograms."""
    histograms = [host_histogram("pair_scan/log10_target_prob", step, scan["target_prob"].clamp_min(1e-45).log10())]
    histograms += [host_histogram(f"pair_scan_grad_norm/{layer}", step, norms)
                   for layer, norms in scan["result"].layer_norms.items()]
    sink.write(scan_scalars(scan["facts"], step) + [h for h in histograms if h is not None])


class ZeroGradStudy(Study):
    """cnn: after every epoch, pair-scan the first ``--scan-images`` test images."""

    figure = "zero_gradients.png"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.images = to_float(self.test.images[: self.args.scan_images]).to(self.device)
        self.scan: Dict[str, Any] = {}
        self.scanned_at = -1  # the step of the last epoch's scan

    def dashboard(self, runs: List[Run]) -> List[Category]:
        return [Category(f"cnn --loss {self.args.loss}: exactly-zero gradients and Keras 2's 1e-7 clip", (
            chart("share of (image, target) pairs whose gradient is exactly zero (all_zero), and of pairs "
                  "whose target probability is clipped (< 1e-7 or > 1 - 1e-7): one line when the clip "
                  "explains every zero", (ALL_ZERO_FRACTION, CLIPPED_FRACTION)),
            chart("log10 of the smallest target probability, against the clip at log10(1e-7) = -7: "
                  "below that line the gradient is exactly zero", (LOG10_MIN_TARGET_PROB, LOG10_CLIP)),
        ))]

    def after_log(self, runs: List[Run], step: int, sink: Sink) -> None:
        """The flags-only scan at each logging step: a point of the curve, not the summary's facts."""
        if not len(self.images) or step == self.scanned_at:
            return  # an epoch's scan already gave this step its point (the step after the epoch's last)
        ctx = Context.current(self.device)
        scan = scan_zero_gradients(runs[0].model, self.images, self.loss_fn, 0, ctx)
        if ctx.is_main:
            sink.write(scan_scalars(scan["facts"], step))

    @property
    def loss_fn(self) -> LossFn:
        return LOSSES[self.args.loss]["categorical"]

    def after_epoch(self, runs: List[Run], step: int, sink: Sink) -> str:
        ctx = Context.current(self.device)  # several processes: the scan covers every rank's share
        self.scan = scan_zero_gradients(runs[0].model, self.images, self.loss_fn, self.args.scan_norm_images, ctx)
        self.scanned_at = step
        if ctx.is_main:
            log_scan(sink, self.scan, step)
        return f"pair scan: {describe(self.scan['facts'], self.args.loss)}"

    def finish(self, runs: List[Run], run_dir: Path, sink: Sink) -> Tuple[Dict[str, Any], str]:
        text = describe(self.scan["facts"], self.args.loss)
        facts, step = self.scan["facts"], runs[0].monitor.global_step
        log10_prob = self.scan["target_prob"].clamp_min(1e-45).log10().flatten().tolist()
        png = zero_gradient_figure(log10_prob, self.scan["result"].all_zero.flatten().tolist(), facts["eps"],
                                   f"{facts['all_zero']} of {facts['pairs']} pairs have an exactly-zero gradient "
                                   f"(--loss {self.args.loss})")
        (run_dir / self.figure).write_bytes(png)
        sink.image("zero_gradients", png, step)
        return {"pair_scan": self.scan["facts"], "pair_scan_text": text}, text
