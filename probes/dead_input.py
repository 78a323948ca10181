"""Input features that were zero in every training example seen.

A feature that is always zero contributes ``x_i * dL/dy = 0`` to the gradient of every
weight it multiplies, so those weights never move: this probe gives the data side of
:class:`probes.frozen.FrozenWeights`' finding.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Dict, Optional

import torch
from torch import nn

from .base import Probe, compiling, first_tensor, first_weight_layer
from .stats import host_reads_are_free


class DeadInputs(Probe):
    """Which input features were exactly zero in every example, via a forward pre-hook.

    The hook sits on the first layer with a weight matrix (see
    :func:`probes.base.first_weight_layer`), or on the layer named by ``layer``
    (``layer=""`` is the model's own input). For a Linear layer a feature is an entry of
    the last dimension (every other dimension counts as examples); otherwise a feature is
    everything but the batch dimension, e.g. ``(C, H, W)`` for a Conv; for an ``nn.Embedding``
    a feature is a vocabulary row (a token id: "always zero" is a token that never occurred,
    as :class:`probes.FrozenWeights` counts embedding rows), and an example is a sequence. Every training
    forward pass is counted, not only logging steps: one ``any`` over the batch into a bool
    accumulator on the device, no host sync. Passes with gradients disabled (evaluation
    under ``torch.no_grad``) and passes inside :func:`probes.suspended` are not counted, nor
    inputs whose feature shape differs from the first one seen (``skipped`` counts them).
    Under several processes a feature is always zero only if it was so on every rank.
    """

    name = "dead_inputs"
    state = {"seen_nonzero": "any", "examples": "sum", "skipped": "sum"}
    traceable = True  # compiled: the mask OR-ed in place and a device counter, no Python counter

    def __init__(self, layer: Optional[str] = None) -> None:
        super().__init__()
        self.layer_name = layer
        self.layer: Optional[str] = None
        self.seen_nonzero: Optional[torch.Tensor] = None  # bool, feature shape
        self.examples = 0
        self.skipped = 0
        self._feature_kind = "input"
        self._left: Optional[torch.Tensor] = None  # CPU: flat indices of the features not seen nonzero yet
        self._examples_compiled: Optional[torch.Tensor] = None  # examples of compiled passes, on the device

    def _on_attach(self, model: nn.Module) -> None:
        self.seen_nonzero, self.examples, self.skipped = None, 0, 0  # counts are per attach
        self.layer, module = first_weight_layer(model, self.layer_name)
        self._feature_kind = "token" if isinstance(module, nn.Embedding) else "input"
        if isinstance(module, nn.Embedding):
            self._forward_pre_hook(module, self._on_tokens)
        else:
            self._forward_pre_hook(module, partial(self._on_input, isinstance(module, nn.Linear)))

    def _on_tokens(self, module: nn.Embedding, inputs: Any) -> None:
        ids = first_tensor(inputs)
        if ids is None:
            return
        n = ids.shape[0] if ids.dim() > 1 else 1
        if compiling():  # traced: tensor updates only
            if self.seen_nonzero is not None and self._examples_compiled is not None:
                self.seen_nonzero.index_fill_(0, ids.detach().reshape(-1), True)
                self._examples_compiled += n
            return
        if self.seen_nonzero is None:
            self.seen_nonzero = torch.zeros(module.num_embeddings, dtype=torch.bool, device=ids.device)
            self._examples_compiled = torch.zeros((), dtype=torch.long, device=ids.device)
        self.seen_nonzero.index_fill_(0, ids.detach().reshape(-1), True)
        self.examples += n

    def _on_input(self, per_feature_last: bool, module: nn.Module, inputs: Any) -> None:
        x = first_tensor(inputs)
        if x is None:
            return
        if self._left is not None and not self._left.numel() and not compiling() and \
                (x.shape[-1] if per_feature_last else math.prod(x.shape[1:])) == self.seen_nonzero.shape[0]:
            # every feature was seen nonzero: nothing can change but the count (no tensor op at all)
            self.examples += (x.numel() // x.shape[-1]) if per_feature_last else x.shape[0]
            return
        x = x.detach()
        flat = x.reshape(-1, x.shape[-1]) if per_feature_last else x.reshape(x.shape[0], -1)
        seen = self.seen_nonzero
        if compiling():  # traced: tensor updates only (an int counter would be a guard)
            if seen is not None and self._examples_compiled is not None and seen.shape[0] == flat.shape[1]:
                seen |= (flat != 0).any(0)
                self._examples_compiled += flat.shape[0]
            return
        if seen is None:
            self.seen_nonzero = (flat != 0).any(0)
            self._examples_compiled = torch.zeros((), dtype=torch.long, device=flat.device)
        elif seen.shape[0] != flat.shape[1]:
            self.skipped += flat.shape[0]  # another input size than the first: not comparable
            return
        elif self._left is not None:  # CPU: only the features not seen nonzero yet (MNIST: ~70 of 784)
            if self._left.numel():
                picked = flat.index_select(1, self._left)
                if not bool(picked.any()):  # the usual step: none of them fired (a read, free on a CPU)
                    self.examples += flat.shape[0]
                    return
                seen.index_put_((self._left,), (picked != 0).any(0))
        else:
            seen |= (flat != 0).any(0)
        if host_reads_are_free(flat.device):
            self._left = torch.nonzero(~self.seen_nonzero).flatten()  # free on a CPU
        self.examples += flat.shape[0]  # a shape, known on the host: no sync

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._left = None

    def always_zero(self) -> Optional[torch.Tensor]:
        """Flat indices of the features that were zero in every example seen so far."""
        if self.seen_nonzero is None:
            return None
        return torch.nonzero(~self.seen_nonzero).flatten()

    def summary(self) -> Dict[str, Any]:
        zero = self.always_zero()
        if zero is None:
            return {}
        examples = self.examples + (int(self._examples_compiled) if self._examples_compiled is not None else 0)
        return {"layer": self.layer, "features": self.seen_nonzero.numel(), "examples": examples,
                "skipped": self.skipped, "always_zero": zero.tolist(), "feature_kind": self._feature_kind}
