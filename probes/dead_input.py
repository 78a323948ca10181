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
    forward pass is counted, not only logging steps. Passes with gradients disabled (evaluation
    under ``torch.no_grad``) and passes inside :func:`probes.suspended` are not counted, nor
    inputs whose feature shape differs from the first one seen (``skipped`` counts them).
    Under several processes a feature is always zero only if it was so on every rank.

    What a pass costs: the largest ``|x|`` of each feature over the batch, folded into a
    running maximum in place (``abs``, ``amax``, ``maximum``: three tensor ops on the device,
    no host read; a feature is "seen nonzero" where that maximum is not 0, NaN included).
    That is cheaper than gathering only the features still zero (an ``index_select`` and an
    ``any`` read back: ~2x the time on a small MLP's 32x784 batch, where op dispatch, not
    memory, is the cost), and the same traced into a torch.compile graph. On a CPU, once every
    feature has been seen nonzero (checked every :data:`CHECK_EVERY` passes, a free read
    there), a pass only counts its examples.
    """

    name = "dead_inputs"
    state = {"seen_nonzero": "any", "examples": "sum", "skipped": "sum"}
    traceable = True  # compiled: the running maximum updated in place and a device counter, no Python counter
    #: passes between two checks, on a CPU, of whether every feature was seen nonzero
    CHECK_EVERY = 32

    def __init__(self, layer: Optional[str] = None) -> None:
        super().__init__()
        self.layer_name = layer
        self.layer: Optional[str] = None
        # per feature: the largest |x| seen (a non-zero value is a feature seen nonzero), in the
        # input's dtype (a float32 copy would flush a float64 1e-300 to 0); bool for tokens
        self._largest: Optional[torch.Tensor] = None
        self.examples = 0
        self.skipped = 0
        self._feature_kind = "input"
        self._all_seen = False  # CPU: every feature was seen nonzero (nothing left to learn but counts)
        self._unchecked = 0  # passes since that was last checked
        self._examples_compiled: Optional[torch.Tensor] = None  # examples of compiled passes, on the device

    @property
    def seen_nonzero(self) -> Optional[torch.Tensor]:
        """Bool mask over the features: nonzero in some example seen."""
        largest = self._largest
        return largest if largest is None or largest.dtype == torch.bool else largest != 0

    @seen_nonzero.setter
    def seen_nonzero(self, value: Optional[torch.Tensor]) -> None:
        """A saved or reduced mask: a running maximum that is 1 where a feature was seen."""
        kind = self._largest
        if value is not None and kind is not None and kind.dtype != torch.bool:
            value = value.to(kind.dtype)
        self._largest, self._all_seen, self._unchecked = value, False, 0

    def _on_attach(self, model: nn.Module) -> None:
        self._largest, self.examples, self.skipped = None, 0, 0  # counts are per attach
        self._all_seen, self._unchecked = False, 0
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
            if self._largest is not None and self._examples_compiled is not None:
                self._largest.index_fill_(0, ids.detach().reshape(-1), True)
                self._examples_compiled += n
            return
        if self._largest is None:
            self._largest = torch.zeros(module.num_embeddings, dtype=torch.bool, device=ids.device)
            self._examples_compiled = torch.zeros((), dtype=torch.long, device=ids.device)
        self._largest.index_fill_(0, ids.detach().reshape(-1), True)
        self.examples += n

    def _on_input(self, per_feature_last: bool, module: nn.Module, inputs: Any) -> None:
        x = first_tensor(inputs)
        if x is None:
            return
        if self._all_seen and not compiling() and \
                (x.shape[-1] if per_feature_last else math.prod(x.shape[1:])) == self._largest.shape[0]:
            # every feature was seen nonzero: nothing can change but the count (no tensor op at all)
            self.examples += (x.numel() // x.shape[-1]) if per_feature_last else x.shape[0]
            return
        if x.requires_grad:  # an activation, not data: no graph for the running maximum
            x = x.detach()
        flat = x if x.dim() == 2 else x.reshape(-1, x.shape[-1]) if per_feature_last else x.reshape(x.shape[0], -1)
        largest = self._largest
        if compiling():  # traced: tensor updates only (an int counter would be a guard)
            if largest is not None and self._examples_compiled is not None and largest.shape[0] == flat.shape[1]:
                _fold(largest, flat)
                self._examples_compiled += flat.shape[0]
            return
        if largest is None:
            self._largest = largest = _extent(flat)
            self._examples_compiled = torch.zeros((), dtype=torch.long, device=flat.device)
        elif largest.shape[0] != flat.shape[1]:
            self.skipped += flat.shape[0]  # another input size than the first: not comparable
            return
        else:
            _fold(largest, flat)
        self.examples += flat.shape[0]  # a shape, known on the host: no sync
        self._unchecked += 1
        if self._unchecked >= self.CHECK_EVERY and host_reads_are_free(flat.device):
            self._unchecked = 0
            self._all_seen = bool(self.seen_nonzero.all())  # free on a CPU

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._all_seen, self._unchecked = False, 0

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


def _extent(flat: torch.Tensor) -> torch.Tensor:
    """Per feature (column), the largest ``|x|`` over the examples (rows): 0 exactly where the
    feature is zero in every one (NaN stays NaN: not zero). Bool and integer inputs are reduced
    to "any nonzero" (``abs`` of the smallest integer overflows to a negative number)."""
    if flat.is_floating_point() or flat.is_complex():
        return flat.abs().amax(0)
    return flat.ne(0).any(0)


def _fold(largest: torch.Tensor, flat: torch.Tensor) -> None:
    """Fold a batch's :func:`_extent` into the running one, in place."""
    extent = _extent(flat)
    if largest.dtype == torch.bool:
        largest.logical_or_(extent.bool() if extent.dtype != torch.bool else extent)
    else:
        torch.maximum(largest, extent.to(largest.dtype), out=largest)
