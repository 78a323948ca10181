"""The weights as they were after the previous optimizer step, shared by the probes that diff them.

:class:`probes.WeightChange` (mean |dW|) and :class:`probes.UpdateRatio` (||dW|| / ||W||) both
need ``W_t - W_{t-1}``. One copy of the weight matrices per model serves both: the first probe
to ask at a step computes every statistic either needs in a few fused ``torch._foreach_*``
calls (no Python loop over the parameters) and moves the snapshot on; the other reads the
same numbers. Probes sharing a snapshot must be stepped by one monitor (same step numbers).

By default they measure the logging steps only: the snapshot is taken when a logging step
starts (one fused copy) and diffed when it ends, so between logs they cost nothing (on a 1 ms
step of a small MLP, diffing every step cost ~1 ms: as much as the step). ``every_step=True``
measures every step, as the questions' own studies do; while one user of a model's snapshot
asks for that, the snapshot moves on every step and the others read it at their steps.
"""
from __future__ import annotations

import weakref
from typing import List, NamedTuple, Optional

import torch
from torch import nn

from .base import Probe, weight_matrices

_SHARED: "weakref.WeakKeyDictionary[nn.Module, WeightSnapshot]" = weakref.WeakKeyDictionary()


class Moves(NamedTuple):
    """Per weight matrix, input first, as (L,) float32 tensors on the weights' device."""

    mean_abs: torch.Tensor  # mean |W_t - W_{t-1}|
    norm: torch.Tensor  # ||W_t - W_{t-1}||
    previous_norm: torch.Tensor  # ||W_{t-1}||


class WeightSnapshot:
    """``W_{t-1}`` of every trainable weight matrix (``dim >= 2``) of one model."""

    def __init__(self, model: nn.Module) -> None:
        named = list(weight_matrices(model))
        self.layers: List[str] = [n for n, _ in named]
        self.params: List[torch.Tensor] = [p for _, p in named]
        self.previous: List[torch.Tensor] = [p.detach().clone() for p in self.params]  # W at attach = W_0
        self._users: set = set()
        self._every_step_users: set = set()
        self._begun: Optional[int] = None
        self._moves: Optional[Moves] = None
        self._step: Optional[int] = None

    @classmethod
    def shared(cls, model: nn.Module, user: object, every_step: bool = False) -> "WeightSnapshot":
        """The snapshot of ``model``, made at the first user's attach; :meth:`release` when done."""
        snapshot = _SHARED.get(model)
        if snapshot is None:
            snapshot = _SHARED[model] = cls(model)
        snapshot._users.add(id(user))
        if every_step:
            snapshot._every_step_users.add(id(user))
        return snapshot

    def release(self, model: nn.Module, user: object) -> None:
        self._users.discard(id(user))
        self._every_step_users.discard(id(user))
        if not self._users and _SHARED.get(model) is self:
            del _SHARED[model]

    @torch.no_grad()
    def begin(self, step: int) -> None:
        """A logging step starts: ``W_{step-1}`` is the weights now. Nothing to do while the
        snapshot moves every step anyway (it already holds them)."""
        if self.params and not self._every_step_users and self._begun != step:
            torch._foreach_copy_(self.previous, [p.detach() for p in self.params])
            self._begun = step

    @torch.no_grad()
    def moves(self, step: int) -> Optional[Moves]:
        """How far each matrix moved at ``step`` (computed once per step, then the snapshot
        becomes ``W_step``); None for a model without weight matrices."""
        if not self.params:
            return None
        if self._step != step:
            current = [p.detach() for p in self.params]
            delta = torch._foreach_sub(current, self.previous)
            sizes = torch.tensor([p.numel() for p in current], dtype=torch.float32, device=current[0].device)
            l1 = torch.stack(torch._foreach_norm(delta, 1)).float()
            self._moves = Moves(l1 / sizes, torch.stack(torch._foreach_norm(delta, 2)).float(),
                                torch.stack(torch._foreach_norm(self.previous, 2)).float())
            torch._foreach_copy_(self.previous, current)
            self._step = step
        return self._moves


class SnapshotProbe(Probe):
    """Base of the probes that diff the weights: attaches to the model's shared snapshot,
    whose ``W_{t-1}`` is part of the probe's checkpoint state (restored in place)."""

    def __init__(self, every_step: bool = False) -> None:
        super().__init__()
        #: measure every step (one fused diff of all weight matrices per step), not only logging steps
        self.every_step = every_step
        self.layers: List[str] = []
        self._snapshot: Optional[WeightSnapshot] = None

    def _on_attach(self, model: nn.Module) -> None:
        self._snapshot = WeightSnapshot.shared(model, self, self.every_step)
        self.layers = list(self._snapshot.layers)
        self._on_snapshot(self._snapshot.params[0].device if self.layers else torch.device("cpu"))

    def _on_snapshot(self, device: torch.device) -> None:
        """Set per-attach state (``self.layers`` is known)."""

    def _on_detach(self) -> None:
        if self._snapshot is not None and self._model is not None:
            self._snapshot.release(self._model, self)

    def _on_arm(self, model: nn.Module) -> None:
        """A logging step starts (called then only, so between logs this probe is not called
        before a step): take the snapshot its end is diffed against."""
        if not self.every_step and self._snapshot is not None:
            self._snapshot.begin(self.step)

    @property
    def works_between_logs(self) -> bool:  # type: ignore[override]
        return self.every_step

    def _measures(self) -> bool:
        """Whether the step now ending is measured: every step, or logging steps only."""
        return self.every_step or self._logging

    def _moves(self, step: int) -> Optional[Moves]:
        return self._snapshot.moves(step) if self._snapshot is not None else None

    @property
    def _previous(self) -> List[torch.Tensor]:
        return self._snapshot.previous if self._snapshot is not None else []

    @_previous.setter
    def _previous(self, value: List[torch.Tensor]) -> None:
        """The base's load_state_dict has already copied the saved tensors into the snapshot."""
