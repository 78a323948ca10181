"""Gradient statistics per parameter and per layer output: histograms, exact zeros, norms."""
from __future__ import annotations

from functools import partial
from typing import Dict, Optional, Tuple, Union

import torch
from torch import nn

from . import stats, tags
from .activations import HIST_SAMPLE, REARRANGING
from .base import Probe, first_tensor, leaf_modules
from .distributed import gradients_averaged_later, world_size


class GradientStats(Probe):
    """On logging steps: for every trainable parameter the histogram, exact-zero fraction
    and norm of its gradient (from ``register_post_accumulate_grad_hook``, so no call is
    needed from the loop), and for every leaf layer the same of the gradient flowing into
    its output (a tensor hook registered by a forward hook, so in-place layers work).

    Under DistributedDataParallel the hook sees this rank's local gradient, so parameter
    gradients are measured at ``end_step`` instead, from the averaged ``.grad`` (identical
    on every rank). A rank's layer outputs are its own share of the global batch: the
    gradient of the all-ranks objective (the mean of the ranks' losses) with respect to them
    is the rank's own gradient / N, so they are scaled by 1/N and their norms combine as
    sqrt(sum of squares) (see :mod:`probes.distributed`).

    Zero fractions where an exact 0 means something: of every parameter's gradient (a weight
    that gets no gradient does not learn: an input that is always 0, a dead unit's row, a
    clipped loss), and of the gradient at the model's output, where the zeros are the loss's
    own (the cnn's clipped cross-entropy passes exactly 0 for a confident pair). Inside the
    model, the zeros of a layer's output gradient are those of the layer after it: a ReLU's off
    units (logged as that ReLU's ``activation_zero_fraction``), a max-pool's or a Dropout's by
    design, none at all after a BatchNorm or a convolution; counting them is the costliest pass
    over the gradient but the min/max one, so they are left out unless asked for.

    Args:
        hist_sample: as for :class:`probes.ActivationStats`: bucket counts of larger
            gradients are estimated from this many elements; None counts every element.
        layer_zero_fractions: ``"model output"`` (the default): the output-gradient zero
            fraction of the layer that produces the model's output only; ``"all"``: of every
            leaf layer.
        moments_sample: as for :class:`probes.ActivationStats`, for the layer output gradients
            (a batch's worth of values each); parameter gradients are always summarised whole.
    """

    name = "gradients"
    works_between_logs = False  # its hooks and end_step act on logging steps only

    def __init__(self, bins: int = stats.DEFAULT_BINS, layer_outputs: bool = True,
                 hist_sample: Optional[int] = HIST_SAMPLE, layer_zero_fractions: str = "model output",
                 moments_sample: Union[str, int, None] = "auto") -> None:
        super().__init__()
        if layer_zero_fractions not in ("model output", "all"):
            raise ValueError(f"layer_zero_fractions must be 'model output' or 'all', not {layer_zero_fractions!r}")
        stats.check_moments_choice(moments_sample)
        self.moments_sample = moments_sample
        self.bins = bins
        self.layer_outputs = layer_outputs
        self.hist_sample = hist_sample
        self.layer_zero_fractions = layer_zero_fractions
        self._latest: Dict[str, torch.Tensor] = {}  # parameter -> its gradient, measured at end_step
        # this step's leaf outputs: (first element's address, count) -> call name, the last
        # one made at an address winning (the model's output is alive when the model returns)
        self._outputs: Dict[Tuple[int, int], str] = {}
        self._model_output: Optional[str] = None  # the call name of the leaf the model returned
        # a layer whose output a reshaping layer (nn.Flatten) took -> that layer's call name: its
        # gradient holds the reshaping layer's output gradient's values (a copy where the backward
        # changes the layout), summarised just before it in the backward pass
        self._reshaped_by: Dict[str, str] = {}
        self._last_reshaping: Optional[Tuple[str, torch.Tensor]] = None  # (call, its output gradient)

    def _on_arm(self, model: nn.Module) -> None:
        for name, param in model.named_parameters():
            if param.requires_grad:
                self._grad_hook(param, partial(self._on_param_grad, name), armed=True)
        if self.layer_outputs:
            for name, module in leaf_modules(model):
                self._forward_hook(module, partial(self._on_output, name), armed=True)
            if self.layer_zero_fractions == "model output":
                self._forward_hook(model, self._on_model_output, armed=True)

    def _on_start(self, step: int, logging: bool) -> None:
        if logging:
            self._outputs.clear()
            self._model_output = None
            self._reshaped_by.clear()
            self._last_reshaping = None

    def _on_param_grad(self, name: str, param: torch.Tensor) -> None:
        # Accumulation over several backward passes fires this hook each time, and DDP
        # averages the gradients only after it: measure .grad once, when the step ends.
        if param.grad is not None:
            self._latest[name] = param

    def end_step(self, step: int) -> None:
        latest, self._latest = self._latest, {}
        for name, param in latest.items():
            if param.grad is not None:
                self._measure(tags.GRAD, name, param.grad, "same" if gradients_averaged_later() else None)

    def _measure(self, kind: str, name: str, grad: torch.Tensor, reduce: Optional[str], zeros: bool = True,
                 same_values_as: Optional[torch.Tensor] = None, moments_sample: Optional[int] = None) -> None:
        summary = stats.summarize(grad.detach(), self.bins, self.scratch, self.hist_sample, zeros=zeros,
                                  same_values_as=same_values_as, moments_sample=moments_sample)
        self._histogram(kind, name, summary.hist, reduce or "histogram")
        if zeros:
            self._scalar(f"{kind}_zero_fraction", name, summary.zero_fraction, reduce or "mean")
        self._scalar(f"{kind}_norm", name, summary.norm, reduce or "l2")

    def _on_output(self, name: str, module: nn.Module, inputs: tuple, output: object) -> None:
        out = first_tensor(output)
        if out is not None and out.requires_grad:
            call = self._call_name(name)
            if isinstance(module, REARRANGING):
                source = first_tensor(inputs)
                producer = self._outputs.get((source.data_ptr(), source.numel())) \
                    if source is not None and source.numel() else None
                if producer is not None:
                    self._reshaped_by[producer] = call
            if out.numel():
                self._outputs[(out.data_ptr(), out.numel())] = call
            out.register_hook(partial(self._on_output_grad, call))

    def _on_model_output(self, module: nn.Module, inputs: tuple, output: object) -> None:
        out = first_tensor(output)
        if out is not None and out.numel():
            self._model_output = self._outputs.get((out.data_ptr(), out.numel()))

    def _on_output_grad(self, name: str, grad: torch.Tensor) -> None:
        if self.measuring:
            n = world_size()
            zeros = self.layer_zero_fractions == "all" or name == self._model_output
            grad = grad / n if n > 1 else grad
            last, self._last_reshaping = self._last_reshaping, None
            same = last[1] if last is not None and self._reshaped_by.get(name) == last[0] else None
            self._measure(tags.OUTPUT_GRAD, name, grad, None, zeros, same_values_as=same,
                          moments_sample=stats.moments_budget(self.moments_sample, self.close_log))
            if name in self._reshaped_by.values():  # a reshaping layer: its producer's gradient comes next
                self._last_reshaping = (name, grad)
