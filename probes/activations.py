"""Per-layer activation statistics: histograms, exact zeros (dead ReLUs), saturation."""
from __future__ import annotations

from functools import partial
from typing import Dict, Optional, Tuple

from torch import nn

from . import stats, tags
from .base import Probe, first_tensor, leaf_modules

# Output range of squashing activations whose saturation we measure (subclasses count too).
SQUASH_BOUNDS: Dict[type, Tuple[float, float]] = {
    nn.Sigmoid: (0.0, 1.0),
    nn.Tanh: (-1.0, 1.0),
    nn.Softmax: (0.0, 1.0),
    nn.Hardtanh: (-1.0, 1.0),
}

# Bucket counts of larger tensors are estimated from this many elements (see stats.summarize);
# everything else (min, max, sums, zero and saturated fractions) is exact. 2**14 leaves a
# bucket holding a fraction p of the values with a relative standard error of
# sqrt((1 - p) / (p * 16384)): 2.5% for p = 1/10, 8% for p = 1/100; drawn to the eye in
# TensorBoard, that is invisible. 2**16 halved the error and cost ~1.5% of a cnn logging step
# on CPU (bench/RESULTS.md: the every-step overhead goal is 1.3x).
HIST_SAMPLE = 2**14


# A user's own squashing module, known by its class name (``MySigmoid``, ``ScaledTanh``): a
# custom sigmoid saturates like torch's. ``LogSigmoid`` is not bounded above 0 and below.
NAMED_BOUNDS: Tuple[Tuple[str, Tuple[float, float]], ...] = (("sigmoid", (0.0, 1.0)), ("tanh", (-1.0, 1.0)))


def squash_bounds(module: nn.Module) -> Optional[Tuple[float, float]]:
    """The output range of a squashing activation (or a subclass of one, or a module of one's
    name without parameters), else None."""
    found = next((b for kind, b in SQUASH_BOUNDS.items() if isinstance(module, kind)), None)
    if found is not None:
        return found
    name = type(module).__name__.lower()
    if "log" in name or any(True for _ in module.parameters(recurse=False)):
        return None
    return next((b for suffix, b in NAMED_BOUNDS if name.endswith(suffix)), None)


class ActivationStats(Probe):
    """Histogram, exact-zero fraction and (for sigmoid/tanh/softmax) saturated fraction
    of every leaf layer's output, measured on logging steps by forward hooks.

    Args:
        hist_sample: estimate the bucket counts of outputs with more elements than this
            from a uniform sample of this many; None counts every element (exact, and
            about twice the cost of a training step on a CPU when every step logs).
    """

    name = "activations"

    def __init__(self, bins: int = stats.DEFAULT_BINS, hist_sample: Optional[int] = HIST_SAMPLE) -> None:
        super().__init__()
        self.bins = bins
        self.hist_sample = hist_sample

    def _on_arm(self, model: nn.Module) -> None:
        for name, module in leaf_modules(model):
            self._forward_hook(module, partial(self._on_output, name, squash_bounds(module)), armed=True)

    def _on_output(self, name: str, bounds: Optional[Tuple[float, float]], module: nn.Module, inputs: tuple,
                   output: object) -> None:
        out = first_tensor(output)
        if out is None or not out.is_floating_point():
            return
        tag, out = self._call_name(name), out.detach()
        summary = stats.summarize(out, self.bins, self.scratch, self.hist_sample)
        self._histogram(tags.ACTIVATIONS, tag, summary.hist)
        self._scalar(tags.ACTIVATION_ZERO_FRACTION, tag, summary.zero_fraction)
        if bounds is not None:
            self._scalar(tags.ACTIVATION_SATURATED_FRACTION, tag, stats.saturated_fraction(out, *bounds))
