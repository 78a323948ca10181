"""Per-layer activation statistics: histograms, exact zeros (dead ReLUs), saturation."""
from __future__ import annotations

from functools import partial
from typing import Dict, Optional, Tuple, Union

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


# Layers whose output is exactly 0 by what they compute, not by accident: a ReLU's 0 is a unit
# that is off for that input (all of a unit's outputs 0 is a dead unit), likewise the clipped
# side of ReLU6/Hardtanh(0, x), Hardsigmoid and Hardswish below -3, a zero-valued Threshold and
# the shrinkage functions' dead band. Elsewhere an exact zero is a rounding accident (a
# BatchNorm/LayerNorm/GroupNorm, convolution or linear output is zero with probability ~0, so
# its zero fraction is a flat 0 that hides the curves that matter), or the layer's design
# (Dropout zeroes a fraction p of its input, plus the input's own zeros: nothing to learn from
# it that the layer before does not say), or it repeats its input's (pooling, reshapes).
# LeakyReLU/PReLU/ELU/GELU/SiLU have no zero region.
EXACT_ZERO_KINDS: Tuple[type, ...] = (nn.ReLU, nn.Hardsigmoid, nn.Hardswish, nn.Hardshrink, nn.Softshrink)

# Layers that only rearrange their input's elements: their output's statistics are their input's
# (see stats.summarize's same_values_as), with no pass over it when the input was summarised last.
REARRANGING: Tuple[type, ...] = (nn.Flatten, nn.Unflatten, nn.Identity)

# A user's own rectifier, known by its class name (``MyReLU``, ``ClippedReLU``), as for squashing
# modules below; not the leaky kinds, whose negative side is not zero.
LEAKY_NAMES = ("leakyrelu", "prelu", "rrelu")


def zeros_mean_something(module: nn.Module) -> bool:
    """Whether an exact 0 in ``module``'s output says something (see :data:`EXACT_ZERO_KINDS`):
    ReLU-family modules, by class (``ReLU6`` as a ``Hardtanh`` with a bound at 0) or, for a
    module without parameters of its own, by a class name ending in ``relu``."""
    if isinstance(module, EXACT_ZERO_KINDS):
        return True
    if isinstance(module, nn.Hardtanh):
        return module.min_val == 0 or module.max_val == 0
    if isinstance(module, nn.Threshold):
        return module.value == 0
    if isinstance(module, tuple(SQUASH_BOUNDS)) or any(True for _ in module.parameters(recurse=False)):
        return False
    name = type(module).__name__.lower()
    return name.endswith("relu") and not name.endswith(LEAKY_NAMES)


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
    """Histogram of every leaf layer's output, its exact-zero fraction where a zero means
    something (ReLU-family outputs: :func:`zeros_mean_something`) and, for sigmoid/tanh/
    softmax, its saturated fraction, measured on logging steps by forward hooks.

    Counting exact zeros is the costliest pass over a tensor after min/max, and a
    BatchNorm's, a convolution's or a Dropout's zero fraction is a flat line or the layer's
    own design: leaving them out makes a logging step cheaper and the dashboard show only
    the curves that can move.

    Args:
        hist_sample: estimate the bucket counts of outputs with more elements than this
            from a uniform sample of this many; None counts every element (exact, and
            about twice the cost of a training step on a CPU when every step logs).
        zero_fractions: ``"relu"`` (the default) for the layers above, ``"all"`` for every
            leaf layer's output.
        moments_sample: ``"auto"`` (the default): on a logging step that comes fewer than
            :data:`probes.stats.CLOSE_LOGS` steps after the one before (logging every step), on a
            CPU, outputs of more than :data:`probes.stats.MOMENTS_SAMPLE` elements are summarised
            from about that many (whole blocks spread over the tensor: sums and norms scaled
            estimates, zero fractions and extremes the blocks', see :func:`probes.stats.summarize`);
            every other logging step reads every element. ``"exact"``: always every element. A
            number: that budget on every logging step. Logging every step, the exact statistics
            of the cnn cost ~1/3 of its step on a CPU.
    """

    name = "activations"

    def __init__(self, bins: int = stats.DEFAULT_BINS, hist_sample: Optional[int] = HIST_SAMPLE,
                 zero_fractions: str = "relu", moments_sample: Union[str, int, None] = "auto") -> None:
        super().__init__()
        if zero_fractions not in ("relu", "all"):
            raise ValueError(f"zero_fractions must be 'relu' or 'all', not {zero_fractions!r}")
        stats.check_moments_choice(moments_sample)
        self.bins = bins
        self.hist_sample = hist_sample
        self.zero_fractions = zero_fractions
        self.moments_sample = moments_sample

    def _on_arm(self, model: nn.Module) -> None:
        for name, module in leaf_modules(model):
            zeros = self.zero_fractions == "all" or zeros_mean_something(module)
            self._forward_hook(module, partial(self._on_output, name, squash_bounds(module), zeros), armed=True)

    def _on_output(self, name: str, bounds: Optional[Tuple[float, float]], zeros: bool, module: nn.Module,
                   inputs: tuple, output: object) -> None:
        out = first_tensor(output)
        if out is None or not out.is_floating_point():
            return
        tag, out = self._call_name(name), out.detach()
        source = first_tensor(inputs) if isinstance(module, REARRANGING) else None
        # a ReLU's output summarised from its input's pass (stats.summarize): no pass of its own
        rectified = first_tensor(inputs) if isinstance(module, nn.ReLU) and not module.inplace else None
        summary = stats.summarize(out, self.bins, self.scratch, self.hist_sample, zeros=zeros, same_values_as=source,
                                  rectified_of=rectified,
                                  moments_sample=stats.moments_budget(self.moments_sample, self.close_log))
        self._histogram(tags.ACTIVATIONS, tag, summary.hist)
        if zeros:
            self._scalar(tags.ACTIVATION_ZERO_FRACTION, tag, summary.zero_fraction)
        if bounds is not None:
            self._scalar(tags.ACTIVATION_SATURATED_FRACTION, tag, stats.saturated_fraction(out, *bounds))
