"""How far each weight matrix moves per optimizer step: mean |W_t - W_{t-1}|.

This is the quantity the vanishing-gradient question plotted per layer: when the gradient
shrinks on its way back through sigmoids, the first layer's weights barely move.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn

from .base import Probe, weight_matrices
from .records import Record, Scalar


def _check_layers(probe: Probe, saved: List[str]) -> None:
    if list(saved) != list(probe.layers):
        raise ValueError(f"{type(probe).__name__}: the saved state is for layers {saved}, not {probe.layers}")


class WeightChange(Probe):
    """After every optimizer step, mean |W_t - W_{t-1}| of each weight matrix (``dim >= 2``).

    Every step is measured (one subtraction per matrix, on the device) and buffered there;
    ``collect`` hands the buffered steps over at logging steps, each record with its own
    step, as ``weight_change/<param>``. ``summary()`` gives the mean over the run.
    """

    name = "weight_change"

    def __init__(self) -> None:
        super().__init__()
        self.layers: List[str] = []
        self._params: List[torch.Tensor] = []
        self._previous: List[torch.Tensor] = []
        self._pending: List[tuple] = []  # (step, (L,) tensor of mean |dW|)
        self._total: torch.Tensor = torch.zeros(0)
        self._steps = 0

    def _on_attach(self, model: nn.Module) -> None:
        named = list(weight_matrices(model))
        self.layers = [n for n, _ in named]
        self._params = [p for _, p in named]
        self._previous = [p.detach().clone() for p in self._params]  # W at attach = W_0
        device = self._params[0].device if self._params else "cpu"
        self._total = torch.zeros(len(named), dtype=torch.float64, device=device)
        self._steps, self._pending = 0, []

    def _on_detach(self) -> None:
        self._params, self._previous = [], []

    @torch.no_grad()
    def end_step(self, step: int) -> None:
        if not self._params:
            return
        moved = []
        for param, previous in zip(self._params, self._previous):
            moved.append((param.detach() - previous).abs().float().mean())
            previous.copy_(param.detach())
        moved = torch.stack(moved)  # (L,)
        self._pending.append((step, moved))
        self._total += moved
        self._steps += 1

    def collect(self, step: int) -> List[Record]:
        records = [Scalar(f"weight_change/{layer}", s, values[i])
                   for s, values in self._pending for i, layer in enumerate(self.layers)]
        self._pending = []
        return records

    def state_dict(self) -> Dict[str, Any]:
        return {"layers": list(self.layers), "previous": list(self._previous), "total": self._total,
                "steps": self._steps, "pending": list(self._pending)}

    @torch.no_grad()
    def load_state_dict(self, state: Dict[str, Any]) -> None:
        _check_layers(self, state["layers"])
        for previous, saved in zip(self._previous, state["previous"]):
            previous.copy_(saved)
        self._total.copy_(state["total"])
        self._steps, self._pending = state["steps"], list(state["pending"])

    def summary(self) -> Dict[str, Any]:
        if not self._steps:
            return {}
        means = (self._total / self._steps).tolist()  # the one host transfer, at the end
        return {"layers": list(self.layers), "mean_abs_dw": means, "steps": self._steps}
