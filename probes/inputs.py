"""The scale of what the model is fed: raw 0-255 pixels, unnormalised features, constant features.

A network initialised for inputs of unit scale (He, Glorot) turns inputs of scale 100 into
pre-activations of scale 100: sigmoids and tanhs saturate, the loss's first gradients are
huge, the learning rate that suits normalised data overshoots. The statistics are taken on
the model's own input, so whatever the data pipeline did (or forgot) is what is measured.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch import nn

from .base import Probe, first_tensor

# per logging step: RMS, mean, standard deviation, fraction of features constant over the batch
STATS = ("rms", "mean", "std", "constant_fraction")


class InputStats(Probe):
    """On logging steps, the model's first floating-point input: its RMS (``sqrt(mean x^2)``),
    mean, standard deviation, largest magnitude, and the fraction of features that have the
    same value in every example of the batch (a feature: one entry of the last dimension for a
    ``(B, T, F)`` input, else everything but the batch dimension, e.g. a pixel of ``(C, H, W)``).

    Integer inputs (token ids) are skipped. The numbers stay on the device until
    :meth:`summary` (means over the logged batches, the largest magnitude seen).
    """

    name = "inputs"
    state = {"_sums": "sum", "_max_abs": "max", "_logs": "sum", "_steps": "same", "_shape": "same"}

    def __init__(self) -> None:
        super().__init__()
        self._sums: Optional[torch.Tensor] = None
        self._max_abs: Optional[torch.Tensor] = None
        self._logs = 0
        self._steps: List[int] = []  # first and last logged step
        self._shape: List[int] = []

    def _on_attach(self, model: nn.Module) -> None:
        self._sums, self._max_abs, self._logs, self._steps, self._shape = None, None, 0, [], []

    def _on_arm(self, model: nn.Module) -> None:
        self._forward_pre_hook(model, self._on_call, armed=True, with_kwargs=True)

    def _on_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self._steps and self._steps[-1] == self.step and self._logs:
            return  # a later pass of the same step (gradient accumulation): the first one is measured
        x = first_tensor([*args, *kwargs.values()])
        if x is None or not x.is_floating_point() or x.dim() < 1 or x.numel() == 0:
            return
        x = x.detach().float()
        row, biggest = input_stats(x)
        if self._sums is None:
            self._sums, self._max_abs = row, biggest
            self._shape = list(x.shape)
        else:
            self._sums += row
            self._max_abs = torch.maximum(self._max_abs, biggest)
        self._logs += 1
        self._steps = [self._steps[0] if self._steps else self.step, self.step]

    def summary(self) -> Dict[str, Any]:
        if self._sums is None or not self._logs:
            return {}
        means = (self._sums / self._logs).tolist()
        out: Dict[str, Any] = dict(zip(STATS, means))
        out.update(max_abs=float(self._max_abs), logs=self._logs, steps=list(self._steps), shape=list(self._shape))
        return out


def input_stats(x: torch.Tensor):
    """(the :data:`STATS` of float input ``x`` as one float64 tensor, its largest magnitude)."""
    flat = x.reshape(-1, x.shape[-1]) if x.dim() == 3 else x.reshape(x.shape[0], -1)
    if flat.shape[0] > 1:
        lo, hi = torch.aminmax(flat, dim=0)
        constant = (lo == hi).float().mean()
    else:
        constant = x.new_zeros(())
    finite = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    row = torch.stack([finite.square().mean().sqrt(), finite.mean(), finite.std(correction=0), constant]).double()
    return row, finite.abs().max().double()
