"""Input features that were zero in every training example seen.

A feature that is always zero contributes ``x_i * dL/dy = 0`` to the gradient of every
weight it multiplies, so those weights never move: this probe gives the data side of
:class:`probes.frozen.FrozenWeights`' finding.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from .base import Probe, compiling, first_tensor, first_weight_layer
from .held import Held, nonzero_somewhere, settled
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

    What a pass costs. On an accelerator, and in a pass traced by torch.compile: the largest
    ``|x|`` of each feature over the batch, folded into a running maximum in place (``abs``,
    ``amax``, ``maximum``: three tensor ops on the device, no host read; a feature is "seen
    nonzero" where that maximum is not 0, NaN included). On a CPU those three ops cost 54 us a
    pass inside the benchmark's 1 ms MLP step (784-128-10, batch 32, one thread: 28, 18 and
    8 us; see :mod:`probes.held`), so there a batch of at
    most :attr:`probes.held.Held.SMALL` bytes is only held (no tensor op: a few attribute
    reads) and folded with the next ones (:mod:`probes.held`, :meth:`_fold_held`): at once
    while more than half the features are still zero, then only the columns of the features
    still zero, read from every held batch, with one ``aminmax`` over all of them. Measured
    on that MLP (the hook's time a step over 900 steps, several runs on a busy 2-core machine):
    84-109 us before, 35-53 us now, of which 14-23 us the pass that holds it and the rest a
    fold of 40 batches (0.9-1.3 ms; profiled: an ``index_select`` of 8 us for each batch's 232
    columns that stay zero in the 8 batches it cycles through, joining them 0.18 ms,
    ``aminmax`` 0.15 ms, ~0.3 ms of Python). The running maximum is then exact only where it is
    0, the one thing read. A batch written in place before its fold is not folded: its
    examples go to ``skipped`` (see :mod:`probes.held`). Once every feature has been seen
    nonzero (found at each fold, or every :data:`CHECK_EVERY` passes folded at once, a free
    read on a CPU), a pass only counts its examples.
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
        # per feature: the largest |x| seen (a non-zero value is a feature seen nonzero; folded by
        # columns, only whether it is 0 is kept exact), in the input's dtype (a float32 copy would
        # flush a float64 1e-300 to 0); bool for tokens
        self._largest: Optional[torch.Tensor] = None
        self._examples = 0
        self._skipped = 0
        self._feature_kind = "input"
        self._per_feature_last = True  # a Linear layer: a feature is an entry of the last dimension
        self._all_seen = False  # CPU: every feature was seen nonzero (nothing left to learn but counts)
        self._unchecked = 0  # passes since that was last checked
        self._examples_compiled: Optional[torch.Tensor] = None  # examples of compiled passes, on the device
        self._zero: Optional[torch.Tensor] = None  # CPU: the features not seen nonzero yet (None: to find)
        self._held = Held(self._fold_held)

    @property
    def seen_nonzero(self) -> Optional[torch.Tensor]:
        """Bool mask over the features: nonzero in some example seen."""
        self._settle()
        largest = self._largest
        return None if largest is None else _seen(largest)

    @seen_nonzero.setter
    def seen_nonzero(self, value: Optional[torch.Tensor]) -> None:
        """A saved or reduced mask: a running maximum that is 1 where a feature was seen."""
        self._settle()
        kind = self._largest
        if value is not None and kind is not None and kind.dtype != torch.bool:
            value = value.to(kind.dtype)
        self._largest, self._all_seen, self._unchecked, self._zero = value, False, 0, None

    examples = settled("_examples", "Examples of eager passes whose every feature was checked.")
    skipped = settled("_skipped", """Examples not checked: of another feature shape than the first, or
        written in place before their held batch was folded (:mod:`probes.held`).""")

    def _on_attach(self, model: nn.Module) -> None:
        self._largest, self._examples, self._skipped = None, 0, 0  # counts are per attach
        self._all_seen, self._unchecked, self._zero = False, 0, None
        self._held = Held(self._fold_held)
        self.layer, module = first_weight_layer(model, self.layer_name)
        self._feature_kind = "token" if isinstance(module, nn.Embedding) else "input"
        self._per_feature_last = isinstance(module, nn.Linear)
        if isinstance(module, nn.Embedding):
            self._forward_pre_hook(module, self._on_tokens)
        else:
            self._forward_pre_hook(module, self._on_input)

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
        elif self._held.keep(None, ids.detach() if ids.requires_grad else ids, n):
            self._examples += n  # folded later (see probes.held)
            return
        self._largest.index_fill_(0, ids.detach().reshape(-1), True)
        self._examples += n

    def _on_input(self, module: nn.Module, inputs: Any) -> None:
        x = inputs[0] if inputs and type(inputs[0]) is torch.Tensor else first_tensor(inputs)
        if x is None:
            return
        per_feature_last = self._per_feature_last
        largest = self._largest
        if largest is not None and not compiling():
            # every pass comes here: Python reads of shapes only, no tensor op
            shape = x.shape
            if per_feature_last and len(shape) == 2:
                rows, features = shape
            else:
                rows, features = (math.prod(shape[:-1]), shape[-1]) if per_feature_last else \
                    (shape[0], math.prod(shape[1:]))
            if features != largest.shape[0]:
                self._skipped += rows  # another input size than the first: not comparable
                return
            if self._all_seen:  # every feature was seen nonzero: nothing can change but the count
                self._examples += rows
                return
            if self._held.keep(None, x.detach() if x.requires_grad else x, rows):
                self._examples += rows  # folded later, with the next passes (see probes.held)
                return
        if x.requires_grad:  # an activation, not data: no graph for the running maximum
            x = x.detach()
        flat = _flat(x, per_feature_last)
        if compiling():  # traced: tensor updates only (an int counter would be a guard)
            if largest is not None and self._examples_compiled is not None and largest.shape[0] == flat.shape[1]:
                _fold(largest, flat)
                self._examples_compiled += flat.shape[0]
            return
        if largest is None:
            self._largest = largest = _extent(flat)
            self._examples_compiled = torch.zeros((), dtype=torch.long, device=flat.device)
        else:
            _fold(largest, flat)
            self._zero = None
        self._examples += flat.shape[0]  # a shape, known on the host: no sync
        self._unchecked += 1
        self._check_all_seen(flat.device)

    def _fold_held(self, key: Any, held: List[torch.Tensor], changed: int) -> None:
        """Fold the batches held since the last fold (:class:`probes.held.Held`); the examples
        of batches written in place since are moved from ``examples`` to ``skipped``.

        Only whether a feature's running maximum is 0 is ever read, so once at least half the
        features were seen nonzero only the others are read: those columns of each batch (an
        ``index_select`` each) and one ``aminmax`` over all of them, and only where one is
        nonzero are they folded. Before that the batches are joined in one buffer and folded
        whole, as a single pass would be."""
        self._examples -= changed
        self._skipped += changed
        if not held:
            return
        largest = self._largest
        if self._feature_kind == "token":
            largest.index_fill_(0, torch.cat([ids.reshape(-1) for ids in held]), True)
            return
        flats = [x if x.dim() == 2 else _flat(x, self._per_feature_last) for x in held]
        zero = self._zero
        if zero is None:
            zero = self._zero = torch.nonzero(largest == 0).flatten()  # a NaN is not 0: seen
        if not zero.numel():
            pass  # every feature was seen nonzero: nothing to read
        elif zero.numel() * 2 <= largest.numel():
            pieces = [flat.index_select(1, zero) for flat in flats]
            picked = self._held.join(pieces)
            if picked is None:
                picked = torch.cat(pieces)
            if nonzero_somewhere(picked):  # a feature seen nonzero for the first time (rare once settled)
                part = largest.index_select(0, zero)
                _fold(part, picked)
                largest.index_copy_(0, zero, part)
                self._zero = None
        else:
            joined = self._held.join(flats)
            for flat in flats if joined is None else [joined]:
                _fold(largest, flat, scratch=joined is not None)
            self._zero = None
        if self._zero is None:
            self._zero = torch.nonzero(largest == 0).flatten()
        self._all_seen = not self._zero.numel()

    def _check_all_seen(self, device: torch.device) -> None:
        """Every :data:`CHECK_EVERY` passes on a CPU (a free read there): whether every feature was seen."""
        if self._unchecked >= self.CHECK_EVERY and host_reads_are_free(device):
            self._unchecked = 0
            largest = self._largest
            self._all_seen = bool(_seen(largest).all())

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._all_seen, self._unchecked = False, 0

    def always_zero(self) -> Optional[torch.Tensor]:
        """Flat indices of the features that were zero in every example seen so far."""
        seen = self.seen_nonzero
        if seen is None:
            return None
        return torch.nonzero(~seen).flatten()

    def summary(self) -> Dict[str, Any]:
        zero = self.always_zero()
        if zero is None:
            return {}
        examples = self._examples + (int(self._examples_compiled) if self._examples_compiled is not None else 0)
        return {"layer": self.layer, "features": self._largest.numel(), "examples": examples,
                "skipped": self._skipped, "always_zero": zero.tolist(), "feature_kind": self._feature_kind}


def _seen(largest: torch.Tensor) -> torch.Tensor:
    """The running maximum (or the token mask) as "seen nonzero" per feature: not 0 (NaN is seen)."""
    return largest if largest.dtype == torch.bool else largest != 0


def _flat(x: torch.Tensor, per_feature_last: bool) -> torch.Tensor:
    """``x`` as (examples, features): a Linear layer's features are its input's last dimension,
    other layers' everything but the first."""
    if x.dim() == 2:
        return x
    return x.reshape(-1, x.shape[-1]) if per_feature_last else x.reshape(x.shape[0], -1)


def _extent(flat: torch.Tensor, scratch: bool = False) -> torch.Tensor:
    """Per feature (column), the largest ``|x|`` over the examples (rows): 0 exactly where the
    feature is zero in every one (NaN stays NaN: not zero). Bool and integer inputs are reduced
    to "any nonzero" (``abs`` of the smallest integer overflows to a negative number).
    ``scratch``: ``flat`` is a buffer of the probe's, which ``abs`` may overwrite."""
    if flat.is_floating_point():
        return (flat.abs_() if scratch else flat.abs()).amax(0)
    if flat.is_complex():
        return flat.abs().amax(0)
    return flat.ne(0).any(0)


def _fold(largest: torch.Tensor, flat: torch.Tensor, scratch: bool = False) -> None:
    """Fold a batch's :func:`_extent` into the running one, in place."""
    extent = _extent(flat, scratch)
    if largest.dtype == torch.bool:
        largest.logical_or_(extent.bool() if extent.dtype != torch.bool else extent)
    else:
        torch.maximum(largest, extent.to(largest.dtype), out=largest)
