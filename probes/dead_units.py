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

from .base import Probe, first_tensor, is_suspended, leaf_modules

#: Modules whose output is exactly zero wherever their input is not positive.
RELU_TYPES: Tuple[type, ...] = (nn.ReLU, nn.ReLU6)


class DeadUnits(Probe):
    """Per ReLU module, a bool mask of the units that were ever nonzero, via a forward hook.

    A unit is one entry of dimension 1 of the output: a feature of a Linear layer's
    ``(B, F)`` output, a channel of a Conv's ``(B, C, H, W)`` (a channel is dead only if it
    is zero at every position of every example); for 3-D outputs ``(B, T, F)`` the last
    dimension. Every training forward pass is counted (one ``any`` per ReLU into a bool on
    the device, no host sync); passes without gradients (evaluation) or inside
    :func:`probes.suspended` are not.
    """

    name = "dead_units"

    def __init__(self) -> None:
        super().__init__()
        self.seen_nonzero: Dict[str, torch.Tensor] = {}
        self.examples: Dict[str, int] = {}

    def _on_attach(self, model: nn.Module) -> None:
        self.seen_nonzero, self.examples = {}, {}
        for name, module in leaf_modules(model):
            if isinstance(module, RELU_TYPES):
                self._keep(module.register_forward_hook(partial(self._on_output, name)))

    def _on_output(self, name: str, module: nn.Module, inputs: tuple, output: Any) -> None:
        if is_suspended() or not torch.is_grad_enabled():
            return
        out = first_tensor(output)
        if out is None or out.dim() < 2:
            return
        out = out.detach()
        unit_dim = out.dim() - 1 if out.dim() == 3 else 1
        # A ReLU's output is >= 0, so "some entry nonzero" is "the largest entry > 0": one
        # reduction pass with no temporary. (``(out != 0).any`` over the other dimensions
        # makes a bool copy and, for a conv's channels, a transposed one: ~7x slower on CPU,
        # 5.6 ms against 0.8 ms for the cnn's first ReLU at batch 128.) A NaN is not > 0.
        fired = out.amax(dim=[d for d in range(out.dim()) if d != unit_dim]) > 0  # (units,)
        seen: Optional[torch.Tensor] = self.seen_nonzero.get(name)
        if seen is None:
            self.seen_nonzero[name] = fired
        elif seen.shape == fired.shape:
            seen |= fired
        else:
            return  # another width than the first call (a module reused on other shapes): not comparable
        self.examples[name] = self.examples.get(name, 0) + out.shape[0]

    def state_dict(self) -> Dict[str, Any]:
        """What a resumed run needs to go on counting (see experiments/checkpoint.py)."""
        return {"seen_nonzero": dict(self.seen_nonzero), "examples": dict(self.examples)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.seen_nonzero = {name: seen.clone() for name, seen in state["seen_nonzero"].items()}
        self.examples = dict(state["examples"])

    def summary(self) -> Dict[str, Any]:
        if not self.seen_nonzero:
            return {}
        layers = {}
        for name, seen in self.seen_nonzero.items():
            dead = torch.nonzero(~seen).flatten().tolist()
            layers[name] = {"units": seen.numel(), "dead": len(dead), "dead_units": dead,
                            "examples": self.examples.get(name, 0)}
        return {"layers": layers}
