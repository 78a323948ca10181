"""Which weights have never changed since attach, bitwise, kept as one bool mask per parameter.

A weight whose gradient is exactly zero at every step never moves under SGD, RMSprop,
Adam... (their updates are multiples of the gradient or of its running averages). The
classic case: an input feature that is zero in every example gives its first-layer weights
a zero gradient, so those weights stay exactly as they were initialised.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

from .base import Probe, first_weight_layer

# Same-width integer dtypes, to compare floats bitwise (0.0 vs -0.0 and NaNs count as changes).
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(_BITS[t.element_size()]) if t.is_floating_point() else t


class FrozenWeights(Probe):
    """Per trainable parameter, a bool mask "this element has changed since attach".

    At the end of each logging step (``every_step=True``: of every step) and when the summary
    is read, the mask is OR-ed with ``W_t != W_0`` (bitwise), on the device: a weight that
    changed stays changed even if it comes back, provided it was away at one of those
    moments (bitwise equal again after moving is not seen in float training; comparing every
    parameter every step cost ~0.2 ms on a 1 ms step of a small MLP). The summary
    gives per-parameter counts and, for the first layer with a weight matrix (see
    :func:`probes.base.first_weight_layer`), the input features none of whose weights ever
    changed: for a Linear weight ``(out, in)`` input feature ``i`` is column ``i``; for an
    Embedding ``(vocabulary, dim)`` it is row ``i`` (token ``i``, as :class:`probes.DeadInputs`
    counts it); for a
    Conv weight ``(out, in, kh, kw)`` it is input channel ``i``.

    Args:
        first_layer: name of the first layer, if registration order does not give it.
        every_step: compare after every step, not only at logging steps.
    """

    name = "frozen"
    state = {"_initial": "same", "changed": "same"}

    def __init__(self, first_layer: Optional[str] = None, every_step: bool = False) -> None:
        super().__init__()
        self.first_layer_name = first_layer
        self.every_step = every_step
        self._params: Dict[str, torch.Tensor] = {}
        self._initial: Dict[str, torch.Tensor] = {}
        self.changed: Dict[str, torch.Tensor] = {}
        self.first_layer: Optional[str] = None
        self._first_weight: Optional[str] = None
        self._rows_are_inputs = False

    def _on_attach(self, model: nn.Module) -> None:
        self._params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self._initial = {n: _bits(p.detach()).clone() for n, p in self._params.items()}
        self.changed = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in self._params.items()}
        layer, module = first_weight_layer(model, self.first_layer_name)
        self.first_layer = layer
        self._rows_are_inputs = isinstance(module, nn.Embedding)  # (vocabulary, dim): input i is row i
        own = [n for n, p in module.named_parameters(recurse=False) if p.dim() >= 2]
        weight = (f"{layer}.{own[0]}" if layer else own[0]) if own else None
        self._first_weight = weight if weight in self.changed else None

    def _on_detach(self) -> None:
        self._compare()  # the steps since the last comparison
        self._params, self._initial = {}, {}  # the masks stay readable after detach

    @property
    def works_between_logs(self) -> bool:  # type: ignore[override]
        return self.every_step

    def end_step(self, step: int) -> None:
        if self.every_step or self._logging:
            self._compare()

    @torch.no_grad()
    def _compare(self) -> None:
        for name, param in self._params.items():
            self.changed[name] |= _bits(param.detach()) != self._initial[name]

    def frozen_input_features(self) -> Optional[torch.Tensor]:
        """Indices of the first layer's input features whose weights never changed."""
        if self._first_weight is None:
            return None
        self._compare()  # the weights as they are now (nothing after detach: the masks stay as they were)
        changed = self.changed[self._first_weight]  # (out, in, ...), or an embedding's (vocabulary, dim)
        if self._rows_are_inputs:
            per_input = changed.any(1)
        else:
            per_input = changed.transpose(0, 1).reshape(changed.shape[1], -1).any(1)  # (in,)
        return torch.nonzero(~per_input).flatten()

    def summary(self) -> Dict[str, Any]:
        if not self.changed:
            return {}
        self._compare()
        layers = {}
        for name, mask in self.changed.items():
            changed = int(mask.sum())
            layers[name] = {"elements": mask.numel(), "changed": changed, "never_changed": mask.numel() - changed}
        out: Dict[str, Any] = {"parameters": layers}
        frozen = self.frozen_input_features()
        if frozen is not None:
            out.update(first_layer=self._first_weight,
                       first_layer_inputs=self.changed[self._first_weight].shape[0 if self._rows_are_inputs else 1],
                       frozen_first_layer_inputs=frozen.tolist())
        return out
