"""The first question's measurement: which (test image, target) pairs get exactly-zero
gradients, and whether that is exactly where Keras 2's probability clip is flat."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from models.losses import KERAS_EPSILON, LOSSES, keras_probabilities, target_probability_clipped
from probes.pair_scan import LossFn, pair_scan
from probes.records import HostScalar
from probes.sinks import Sink, TensorBoardSink

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


def log_scan(sink: Sink, scan: Dict, step: int) -> None:
    """Pair-scan facts as scalars; on TensorBoard also the target-probability spread and norms as
    histograms (``add_histogram`` bins raw values, which a :class:`probes.sinks.Sink` does not take)."""
    facts = scan["facts"]
    sink.write([HostScalar("pair_scan/all_zero_fraction", step, facts["all_zero_fraction"]),
                HostScalar("pair_scan/clipped_fraction", step, facts["clipped"] / facts["pairs"])])
    if not isinstance(sink, TensorBoardSink):
        return
    w = sink.writer
    w.add_histogram("pair_scan/log10_target_prob", scan["target_prob"].clamp_min(1e-45).log10().cpu(), step)
    for layer, norms in scan["result"].layer_norms.items():
        w.add_histogram(f"pair_scan_grad_norm/{layer}", norms.cpu(), step)


class ZeroGradStudy(Study):
    """cnn: after every epoch, pair-scan the first ``--scan-images`` test images."""

    figure = "zero_gradients.png"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.images = to_float(self.test.images[: self.args.scan_images]).to(self.device)
        self.scan: Dict[str, Any] = {}

    def after_epoch(self, runs: List[Run], step: int, sink: Sink) -> str:
        loss_fn = LOSSES[self.args.loss]["categorical"]
        ctx = Context.current(self.device)  # several processes: the scan covers every rank's share
        self.scan = scan_zero_gradients(runs[0].model, self.images, loss_fn, self.args.scan_norm_images, ctx)
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
