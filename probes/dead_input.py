"""Input features that were zero in every training example seen.

A feature that is always zero contributes ``x_i * dL/dy = 0`` to the gradient of every
weight it multiplies, so those weights never move: this probe gives the data side of
:class:`probes.frozen.FrozenWeights`' finding.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Dict, Optional

import torch
from torch import nn

from .base import Probe, first_tensor, first_weight_layer


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

    def __init__(self, layer: Optional[str] = None) -> None:
        super().__init__()
        self.layer_name = layer
        self.layer: Optional[str] = None
        self.seen_nonzero: Optional[torch.Tensor] = None  # bool, feature shape
        self.examples = 0
        self.skipped = 0
        self._feature_kind = "input"

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
        if self.seen_nonzero is None:
            self.seen_nonzero = torch.zeros(module.num_embeddings, dtype=torch.bool, device=ids.device)
        self.seen_nonzero.index_fill_(0, ids.detach().reshape(-1), True)
        self.examples += ids.shape[0] if ids.dim() > 1 else 1

    def _on_input(self, per_feature_last: bool, module: nn.Module, inputs: Any) -> None:
        x = first_tensor(inputs)
        if x is None:
            return
        x = x.detach()
        flat = x.reshape(-1, x.shape[-1]) if per_feature_last else x.reshape(x.shape[0], -1)
        nonzero = (flat != 0).any(0)
        if self.seen_nonzero is None:
            self.seen_nonzero = nonzero
        elif self.seen_nonzero.shape != nonzero.shape:
            self.skipped += flat.shape[0]  # another input size than the first: not comparable
            return
        else:
            self.seen_nonzero |= nonzero
        self.examples += flat.shape[0]  # a shape, known on the host: no sync

    def always_zero(self) -> Optional[torch.Tensor]:
        """Flat indices of the features that were zero in every example seen so far."""
        if self.seen_nonzero is None:
            return None
        return torch.nonzero(~self.seen_nonzero).flatten()

    def summary(self) -> Dict[str, Any]:
        zero = self.always_zero()
        if zero is None:
            return {}
        return {"layer": self.layer, "features": self.seen_nonzero.numel(), "examples": self.examples,
                "skipped": self.skipped, "always_zero": zero.tolist(), "feature_kind": self._feature_kind}
