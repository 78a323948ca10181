"""How far each weight matrix moves per optimizer step: mean |W_t - W_{t-1}|.

This is the quantity the vanishing-gradient question plotted per layer: when the gradient
shrinks on its way back through sigmoids, the first layer's weights barely move.
"""
from __future__ import annotations

from typing import Any, Dict, List

import torch

from . import tags
from .records import Record, Scalar
from .snapshot import SnapshotProbe


class WeightChange(SnapshotProbe):
    """After every optimizer step, mean |W_t - W_{t-1}| of each weight matrix (``dim >= 2``).

    Logging steps are measured (``every_step=True``: every step), on the device, sharing
    :class:`probes.snapshot.WeightSnapshot` with :class:`probes.UpdateRatio`, and buffered
    there; ``collect`` hands the buffered steps over at logging steps, each record with its own
    step, as ``weight_change/<param>``. ``summary()`` gives the mean over the measured steps.
    """

    name = "weight_change"
    state = {"_previous": "same", "_buffered": "same", "_total": "same", "_steps": "same"}
    _steps = 0
    _buffered: List[tuple] = []

    def _on_snapshot(self, device: torch.device) -> None:
        self._buffered: List[tuple] = []  # (step, (L,) tensor of mean |dW|)
        self._total = torch.zeros(len(self.layers), dtype=torch.float64, device=device)
        self._steps = 0

    def end_step(self, step: int) -> None:
        if not self._measures():
            return
        moves = self._moves(step)
        if moves is not None:
            self._buffered.append((step, moves.mean_abs))
            self._total += moves.mean_abs
            self._steps += 1

    def _late_records(self, step: int) -> List[Record]:
        records = [Scalar(tags.tag(tags.WEIGHT_CHANGE, layer), s, values[i], "same")
                   for s, values in self._buffered for i, layer in enumerate(self.layers)]
        self._buffered = []
        return records

    def summary(self) -> Dict[str, Any]:
        if not self._steps:
            return {}
        means = (self._total / self._steps).tolist()  # the one host transfer, at the end
        return {"layers": list(self.layers), "mean_abs_dw": means, "steps": self._steps}
