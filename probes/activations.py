"""Per-layer activation statistics: histograms, exact zeros (dead ReLUs), saturation."""
from __future__ import annotations

from functools import partial
from typing import Dict, List, Optional, Tuple

from torch import nn

from . import stats
from .base import Probe, first_tensor, leaf_modules
from .records import Histogram, Record, Scalar

# Output range of squashing activations whose saturation we measure.
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
        self._records: List[Record] = []
        self._calls: Dict[str, int] = {}
        self._scratch = stats.Scratch()
        self.last_zero_fraction: Dict[str, float] = {}
        self.last_saturation: Dict[str, float] = {}

    def _on_arm(self, model: nn.Module) -> None:
        for name, module in leaf_modules(model):
            self._keep_for_step(module.register_forward_hook(partial(self._on_output, name, type(module))))

    def start_step(self, step: int, logging: bool) -> None:
        super().start_step(step, logging)
        self._calls.clear()
        if not logging:
            self._scratch.release()

    def _on_output(self, name: str, kind: type, module: nn.Module, inputs: tuple, output: object) -> None:
        if not self.recording:
            return
        out = first_tensor(output)
        if out is None or not out.is_floating_point():
            return
        calls = self._calls.get(name, 0)
        self._calls[name] = calls + 1
        tag = name if calls == 0 else f"{name}#{calls}"  # a module called twice per forward
        out = out.detach()
        summary = stats.summarize(out, self.bins, self._scratch, self.hist_sample)
        self._records.append(Histogram(f"activations/{tag}", self.step, summary.hist))
        self._records.append(Scalar(f"activation_zero_fraction/{tag}", self.step, summary.zero_fraction))
        bounds = SQUASH_BOUNDS.get(kind)
        if bounds is not None:
            self._records.append(
                Scalar(f"activation_saturated_fraction/{tag}", self.step, stats.saturated_fraction(out, *bounds))
            )

    def _on_detach(self) -> None:
        self._scratch.release()

    def collect(self, step: int) -> List[Record]:
        records, self._records = self._records, []
        self._scratch.new_step()
        return records
