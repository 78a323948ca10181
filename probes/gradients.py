"""Gradient statistics per parameter and per layer output: histograms, exact zeros, norms."""
from __future__ import annotations

from functools import partial
from typing import Dict, List, Optional

import torch
from torch import nn

from . import stats
from .activations import HIST_SAMPLE
from .base import Probe, first_tensor, leaf_modules
from .distributed import gradients_averaged_later
from .records import Histogram, Record, Scalar


class GradientStats(Probe):
    """On logging steps: for every trainable parameter the histogram, exact-zero fraction
    and norm of its gradient (from ``register_post_accumulate_grad_hook``, so no call is
    needed from the loop), and for every leaf layer the same of the gradient flowing into
    its output (a tensor hook registered by a forward hook, so in-place layers work).

    Under DistributedDataParallel the hook sees this rank's local gradient, so parameter
    gradients are measured at ``end_step`` instead, from the averaged ``.grad`` (see
    :mod:`probes.distributed`); layer-output gradients stay per rank and are reduced.

    Args:
        hist_sample: as for :class:`probes.ActivationStats`: bucket counts of larger
            gradients are estimated from this many elements; None counts every element.
    """

    name = "gradients"

    def __init__(self, bins: int = stats.DEFAULT_BINS, layer_outputs: bool = True,
                 hist_sample: Optional[int] = HIST_SAMPLE) -> None:
        super().__init__()
        self.bins = bins
        self.layer_outputs = layer_outputs
        self.hist_sample = hist_sample
        self._scratch = stats.Scratch()
        self._param_stats: Dict[str, List[Record]] = {}
        self._output_records: List[Record] = []
        self._calls: Dict[str, int] = {}
        self._averaged_later: Dict[str, torch.Tensor] = {}

    def _on_arm(self, model: nn.Module) -> None:
        for name, param in model.named_parameters():
            if param.requires_grad:
                self._keep_for_step(param.register_post_accumulate_grad_hook(partial(self._on_param_grad, name)))
        if self.layer_outputs:
            for name, module in leaf_modules(model):
                self._keep_for_step(module.register_forward_hook(partial(self._on_output, name)))

    def start_step(self, step: int, logging: bool) -> None:
        super().start_step(step, logging)
        self._calls.clear()
        if not logging:
            self._scratch.release()

    def _records(self, kind: str, name: str, grad: torch.Tensor) -> List[Record]:
        summary = stats.summarize(grad.detach(), self.bins, self._scratch, self.hist_sample)
        return [
            Histogram(f"{kind}/{name}", self.step, summary.hist),
            Scalar(f"{kind}_zero_fraction/{name}", self.step, summary.zero_fraction),
            Scalar(f"{kind}_norm/{name}", self.step, summary.norm),
        ]

    def _on_param_grad(self, name: str, param: torch.Tensor) -> None:
        if not self.recording or param.grad is None:
            return
        if gradients_averaged_later():  # DDP: this is the local gradient; measure the average at end_step
            self._averaged_later[name] = param
            return
        self._measure_param(name, param.grad.detach())

    def end_step(self, step: int) -> None:
        pending, self._averaged_later = self._averaged_later, {}
        for name, param in pending.items():
            if param.grad is not None:
                self._measure_param(name, param.grad.detach())

    def _measure_param(self, name: str, grad: torch.Tensor) -> None:
        # Accumulation over several backward passes fires this hook each time; the last
        # call sees the full gradient, so it simply replaces the earlier measurement.
        self._param_stats[name] = self._records("grad", name, grad)

    def _on_output(self, name: str, module: nn.Module, inputs: tuple, output: object) -> None:
        if not self.recording:
            return
        out = first_tensor(output)
        if out is not None and out.requires_grad:
            calls = self._calls.get(name, 0)
            self._calls[name] = calls + 1
            tag = name if calls == 0 else f"{name}#{calls}"  # a module called twice per forward
            out.register_hook(partial(self._on_output_grad, tag))

    def _on_output_grad(self, name: str, grad: torch.Tensor) -> None:
        if not self.recording:
            return
        self._output_records += self._records("output_grad", name, grad)

    def _on_detach(self) -> None:
        self._scratch.release()

    def collect(self, step: int) -> List[Record]:
        records = [r for group in self._param_stats.values() for r in group] + self._output_records
        self._param_stats, self._output_records = {}, []
        self._scratch.new_step()
        return records
