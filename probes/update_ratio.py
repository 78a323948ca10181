"""Per weight matrix and step: ||grad||, ||update|| and ||update|| / ||weight||.

The ratio says how fast a layer learns relative to its own scale. Adam, RMSprop and
Adadelta make ||update|| nearly independent of ||grad||, so a layer whose weights are 200x
larger (for the same function) learns 200x slower: the gradient norms alone hide that.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Dict, List

import torch
from torch import nn

from . import stats
from .base import Probe, is_suspended, weight_matrices
from .distributed import gradients_averaged_later
from .records import Record, Scalar

_TAGS = ("update_grad_norm", "update_norm", "update_ratio")


class UpdateRatio(Probe):
    """||grad|| (from ``register_post_accumulate_grad_hook``), ||W_t - W_{t-1}|| and
    ||W_t - W_{t-1}|| / ||W_{t-1}|| of every weight matrix (``dim >= 2``), at every step.

    Measured on the device at every step, so that ``summary()`` can give means over the
    run; only logging steps are handed to the sink, as ``update_grad_norm/<param>``,
    ``update_norm/<param>`` and ``update_ratio/<param>``. The update is the difference
    from the weights after the previous step (the snapshot at attach, at first), as
    cockpit's ``UpdateSize`` does.
    """

    name = "update_ratio"

    def __init__(self) -> None:
        super().__init__()
        self.layers: List[str] = []
        self._params: List[torch.Tensor] = []
        self._previous: List[torch.Tensor] = []
        self._grad_norm: Dict[str, torch.Tensor] = {}
        self._records: List[Record] = []
        self._total = torch.zeros(0)
        self._steps = 0

    def _on_attach(self, model: nn.Module) -> None:
        named = list(weight_matrices(model))
        self.layers = [n for n, _ in named]
        self._params = [p for _, p in named]
        self._previous = [p.detach().clone() for p in self._params]
        for name, param in named:
            self._keep(param.register_post_accumulate_grad_hook(partial(self._on_grad, name)))
        device = self._params[0].device if self._params else "cpu"
        self._total = torch.zeros(len(_TAGS), len(named), dtype=torch.float64, device=device)
        self._steps, self._records = 0, []

    def _on_detach(self) -> None:
        self._params, self._previous, self._grad_norm = [], [], {}

    def _on_grad(self, name: str, param: torch.Tensor) -> None:
        if not is_suspended() and param.grad is not None and not gradients_averaged_later():
            self._grad_norm[name] = stats.norm(param.grad)  # accumulation: the last call wins

    @torch.no_grad()
    def end_step(self, step: int) -> None:
        if not self._params:
            return
        zero = self._total.new_zeros((), dtype=torch.float32)
        if gradients_averaged_later():  # DDP: .grad holds the ranks' average only after backward
            self._grad_norm = {n: stats.norm(p.grad) for n, p in zip(self.layers, self._params) if p.grad is not None}
        grads = torch.stack([self._grad_norm.get(n, zero) for n in self.layers])
        updates, weights = [], []
        for param, previous in zip(self._params, self._previous):
            weights.append(stats.norm(previous))
            updates.append(stats.norm(param.detach() - previous))
            previous.copy_(param.detach())
        updates, weights = torch.stack(updates), torch.stack(weights)
        table = torch.stack([grads, updates, updates / weights.clamp_min(torch.finfo(weights.dtype).tiny)])  # (3, L)
        self._total += table
        self._steps += 1
        self._grad_norm = {}
        if self._logging:
            self._records += [Scalar(f"{tag}/{layer}", step, table[t, i])
                              for t, tag in enumerate(_TAGS) for i, layer in enumerate(self.layers)]

    def collect(self, step: int) -> List[Record]:
        records, self._records = self._records, []
        return records

    def state_dict(self) -> Dict[str, Any]:
        return {"layers": list(self.layers), "previous": list(self._previous), "total": self._total,
                "steps": self._steps, "grad_norm": dict(self._grad_norm), "records": list(self._records)}

    @torch.no_grad()
    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if list(state["layers"]) != self.layers:
            raise ValueError(f"UpdateRatio: the saved state is for layers {state['layers']}, not {self.layers}")
        for previous, saved in zip(self._previous, state["previous"]):
            previous.copy_(saved)
        self._total.copy_(state["total"])
        self._steps, self._grad_norm, self._records = state["steps"], dict(state["grad_norm"]), list(state["records"])

    def summary(self) -> Dict[str, Any]:
        if not self._steps:
            return {}
        means = (self._total / self._steps).tolist()
        return {"layers": list(self.layers), "steps": self._steps,
                "mean_grad_norm": means[0], "mean_update_norm": means[1], "mean_update_ratio": means[2]}
