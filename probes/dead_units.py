"""ReLU units that never fired: output exactly zero for every training example seen.

A unit whose ReLU output is zero for every example passes no gradient back, so the weights
feeding it never learn (a "dead ReLU"). That is a different cause from a weight whose
*input* is always zero (:class:`probes.dead_input.DeadInputs`): the diagnosis keeps them
apart, which is why this is measured per unit rather than read off zero-gradient fractions.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from .base import Probe, first_tensor, leaf_modules
from .stats import host_reads_are_free

#: Modules whose output is exactly zero wherever their input is not positive.
RELU_TYPES: Tuple[type, ...] = (nn.ReLU, nn.ReLU6)


class DeadUnits(Probe):
    """Per ReLU module, a bool mask of the units that were ever nonzero, via a forward hook.

    A unit is one entry of dimension 1 of the output: a feature of a Linear layer's
    ``(B, F)`` output, a channel of a Conv's ``(B, C, H, W)`` (a channel is dead only if it
    is zero at every position of every example); for 3-D outputs ``(B, T, F)`` the last
    dimension. Every training forward pass is counted; passes without gradients
    (evaluation) or inside :func:`probes.suspended` are not.

    Cheap enough for every step: once a unit has fired it can never be dead again, so each
    pass looks only at the units that have not fired yet. In a healthy network that is all
    of them on the first step and none soon after (then the hook reads nothing at all);
    with a few dead units, their slices alone. Reading a whole ReLU output from memory on
    every step cost ~1% of a cnn step on CPU. The list of units left to watch is refreshed
    from the device mask every step on a CPU (reading it back is free there) and on
    logging steps elsewhere (a sync); in between it may still hold units that fired since,
    which costs a little reading, never a wrong answer.
    """

    name = "dead_units"
    state = {"seen_nonzero": "any", "examples": "sum"}

    def __init__(self) -> None:
        super().__init__()
        self.seen_nonzero: Dict[str, torch.Tensor] = {}
        self.examples: Dict[str, int] = {}
        self._watch: Dict[str, torch.Tensor] = {}  # per module: indices of units not seen firing (maybe stale)

    def _on_attach(self, model: nn.Module) -> None:
        self.seen_nonzero, self.examples, self._watch = {}, {}, {}
        for name, module in leaf_modules(model):
            if isinstance(module, RELU_TYPES):
                self._forward_hook(module, partial(self._on_output, name))

    def _on_start(self, step: int, logging: bool) -> None:
        for name, seen in self.seen_nonzero.items():
            watch = self._watch.get(name)
            if watch is not None and not watch.numel():
                continue  # every unit has fired: nothing can change
            if logging or host_reads_are_free(seen.device):
                self._watch[name] = torch.nonzero(~seen).flatten()  # a sync where reads are not free

    def _on_output(self, name: str, module: nn.Module, inputs: tuple, output: Any) -> None:
        out = first_tensor(output)
        if out is None or out.dim() < 2:
            return
        out = out.detach()
        unit_dim = out.dim() - 1 if out.dim() == 3 else 1
        others = [d for d in range(out.dim()) if d != unit_dim]
        seen: Optional[torch.Tensor] = self.seen_nonzero.get(name)
        if seen is None:
            # A ReLU's output is >= 0, so "some entry nonzero" is "the largest entry > 0": one
            # reduction pass with no temporary (``(out != 0).any`` makes a bool copy, and for a
            # conv's channels a transposed one: ~7x slower on CPU). A NaN is not > 0.
            self.seen_nonzero[name] = out.amax(dim=others) > 0
        elif seen.numel() != out.shape[unit_dim]:
            return  # another width than the first call (a module reused on other shapes): not comparable
        else:
            watch = self._watch.get(name)
            if watch is None:
                seen |= out.amax(dim=others) > 0
            elif watch.numel():
                seen[watch] |= out.index_select(unit_dim, watch).amax(dim=others) > 0
        self.examples[name] = self.examples.get(name, 0) + out.shape[0]

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._watch = {}  # refreshed from the restored masks at the next step

    def summary(self) -> Dict[str, Any]:
        if not self.seen_nonzero:
            return {}
        layers = {}
        for name, seen in self.seen_nonzero.items():
            dead = torch.nonzero(~seen).flatten().tolist()
            layers[name] = {"units": seen.numel(), "dead": len(dead), "dead_units": dead,
                            "examples": self.examples.get(name, 0)}
        return {"layers": layers}
