"""Per weight matrix and step: ||grad||, ||update|| and ||update|| / ||weight||.

The ratio says how fast a layer learns relative to its own scale. Adam, RMSprop and
Adadelta make ||update|| nearly independent of ||grad||, so a layer whose weights are 200x
larger (for the same function) learns 200x slower: the gradient norms alone hide that.
"""
from __future__ import annotations

from typing import Any, Dict

import torch

from . import tags
from .snapshot import SnapshotProbe

_KINDS = (tags.UPDATE_GRAD_NORM, tags.UPDATE_NORM, tags.UPDATE_RATIO)
_BIG = float(torch.finfo(torch.float32).max)


class UpdateRatio(SnapshotProbe):
    """||grad||, ||W_t - W_{t-1}|| and ||W_t - W_{t-1}|| / ||W_{t-1}|| of every weight matrix
    (``dim >= 2``), at logging steps (``every_step=True``: at every step), on the device.

    ``summary()`` gives means over the measured steps (and of ||W_{t-1}||, for gradients relative to the
    weights they move), and per layer the largest ratio of one step, and the largest
    ||grad||/||W||, each with its step (a gradient or a step far larger than the weights
    themselves is an explosion); only logging steps are handed to the sink, as
    ``update_grad_norm/<param>``, ``update_norm/<param>`` and ``update_ratio/<param>``. The
    update is the difference from the weights after the previous step (the snapshot at
    attach, at first), as cockpit's ``UpdateSize`` does; the gradient is ``.grad`` when the
    step ends, i.e. what the optimizer applied (after accumulation, clipping and, under DDP,
    averaging over ranks).
    """

    name = "update_ratio"
    state = {"_previous": "same", "_total": "same", "_steps": "same", "_largest": "same"}
    _steps = 0

    def _on_snapshot(self, device: torch.device) -> None:
        self._total = torch.zeros(len(_KINDS) + 1, len(self.layers), dtype=torch.float64, device=device)
        # per layer: the largest ||update||/||W|| of a step and that step, the largest ||grad||/||W|| and
        # its step (steps from weights that were not all 0: a zero-initialised weight has no scale yet)
        self._largest = torch.zeros(4, len(self.layers), dtype=torch.float64, device=device)
        self._steps = 0

    @torch.no_grad()
    def end_step(self, step: int) -> None:
        if not self._measures():
            return
        moves = self._moves(step)
        if moves is None:
            return
        grads = [p.grad.detach() if p.grad is not None else p.new_zeros(()) for p in self._snapshot.params]
        grad_norms = torch.stack(torch._foreach_norm(grads, 2)).float()
        ratio = moves.norm / moves.previous_norm.clamp_min(torch.finfo(torch.float32).tiny)
        table = torch.stack([grad_norms, moves.norm, ratio])  # (3, L)
        self._total[:3] += table
        self._total[3] += moves.previous_norm
        self._keep_largest(0, ratio, moves.previous_norm, step)
        self._keep_largest(2, grad_norms / moves.previous_norm.clamp_min(torch.finfo(torch.float32).tiny),
                           moves.previous_norm, step)
        self._steps += 1
        if self._logging:
            for t, kind in enumerate(_KINDS):
                for i, layer in enumerate(self.layers):
                    self._scalar(kind, layer, table[t, i], "same", step)

    def _keep_largest(self, row: int, value: torch.Tensor, weight_norm: torch.Tensor, step: int) -> None:
        """Rows ``row`` (value) and ``row + 1`` (step) of ``_largest``: the largest so far, on the device."""
        defined = torch.where(weight_norm > 0, value.double(), torch.zeros_like(self._largest[row]))
        defined = defined.nan_to_num(nan=_BIG, posinf=_BIG).clamp(max=_BIG)  # an overflow: the largest there is
        bigger = defined > self._largest[row]
        self._largest[row] = torch.where(bigger, defined, self._largest[row])
        self._largest[row + 1] = torch.where(bigger, torch.full_like(defined, step), self._largest[row + 1])

    def summary(self) -> Dict[str, Any]:
        if not self._steps:
            return {}
        means = (self._total / self._steps).tolist()
        largest, at, grad, grad_at = self._largest.tolist()
        return {"layers": list(self.layers), "steps": self._steps, "mean_grad_norm": means[0],
                "mean_update_norm": means[1], "mean_update_ratio": means[2], "mean_weight_norm": means[3],
                "max_update_ratio": largest, "max_update_ratio_step": [int(s) for s in at],
                "max_relative_grad": grad, "max_relative_grad_step": [int(s) for s in grad_at]}
