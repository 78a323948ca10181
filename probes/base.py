"""The small common base of every probe: attach, detach, hook bookkeeping, step moments.

A probe keeps all of its state on itself, never on the user's module, keeps every hook
handle it registers and removes them on :meth:`Probe.detach`, which may run any number of
times. Subclasses write only the measurement: they register hooks in :meth:`_on_attach`,
or in :meth:`_on_arm` for hooks that only logging steps need, and override the moments
they need (:meth:`start_step`, :meth:`end_step`, :meth:`collect`), all no-ops here.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Dict, Iterator, List, Optional

import torch
from torch import nn

from .records import Record

_suspension = threading.local()


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """Silence every probe while the library itself runs the model (pair scans, evaluation).

    Hooks still fire under ``torch.func`` transforms, where touching the tensors they see
    would fail or measure the wrong thing, so hooks check this first.
    """
    depth = getattr(_suspension, "depth", 0)
    _suspension.depth = depth + 1
    try:
        yield
    finally:
        _suspension.depth = depth


def is_suspended() -> bool:
    return getattr(_suspension, "depth", 0) > 0


class ProbeError(RuntimeError):
    """A probe was used in a way that cannot work (attached twice, detached model...)."""


class Probe:
    """Base class: one measurement, attached to one model at a time.

    Moments, in the order a training step sees them:
    ``start_step(step, logging)`` before the step's forward pass; hooks fire during
    forward/backward; ``end_step(step)`` after the optimizer step; ``collect(step)`` on
    logging steps only, returning device-side records.
    """

    #: short name used in tags and in ``Monitor`` menus
    name: str = "probe"

    def __init__(self) -> None:
        self._handles: List[Any] = []
        self._step_handles: List[Any] = []  # hooks registered for the current logging step
        self._model: Optional[nn.Module] = None
        self._logging = False
        self.step = 0

    # -- attach / detach -------------------------------------------------------------
    def attach(self, model: nn.Module) -> "Probe":
        """Register this probe's hooks on ``model``; use as ``with probe.attach(model): ...``."""
        if self._model is not None:
            raise ProbeError(
                f"{type(self).__name__} is already attached to a {type(self._model).__name__}; "
                "detach() it before attaching it again"
            )
        self._model = model
        try:
            self._on_attach(model)
        except BaseException:
            self.detach()
            raise
        return self

    def detach(self) -> None:
        """Remove every hook this probe registered; safe to call twice."""
        self._disarm()
        while self._handles:
            self._handles.pop().remove()
        if self._model is not None:
            self._on_detach()
        self._model = None
        self._logging = False

    @property
    def attached(self) -> bool:
        return self._model is not None

    def __enter__(self) -> "Probe":
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _keep(self, handle: Any) -> None:
        self._handles.append(handle)

    def _keep_for_step(self, handle: Any) -> None:
        """Keep a hook registered in :meth:`_on_arm`; it is removed when a step that does not
        log starts."""
        self._step_handles.append(handle)

    def _disarm(self) -> None:
        while self._step_handles:
            self._step_handles.pop().remove()

    # -- for subclasses --------------------------------------------------------------
    def _on_attach(self, model: nn.Module) -> None:
        """Register hooks; called once per attach."""

    def _on_detach(self) -> None:
        """Release per-attach state beyond hooks (hooks are removed already)."""

    def _on_arm(self, model: nn.Module) -> None:
        """Register hooks needed only on logging steps, with :meth:`_keep_for_step`. Called when
        a logging step starts; between logs such hooks are not there at all, so the model
        runs as if unprobed (not even a Python call per layer)."""

    @property
    def recording(self) -> bool:
        """True while hooks should measure: a logging step, not suspended."""
        return self._logging and not is_suspended()

    # -- moments ---------------------------------------------------------------------
    def start_step(self, step: int, logging: bool) -> None:
        """Called before a step's forward pass; ``logging`` says whether it will be logged."""
        self.step = step
        self._logging = logging
        if not logging:
            self._disarm()
        elif self._model is not None and not self._step_handles:
            self._on_arm(self._model)

    def end_step(self, step: int) -> None:
        """Called after the optimizer has updated the weights at ``step``."""

    def collect(self, step: int) -> List[Record]:
        """Return the records measured since the last logging step (device tensors)."""
        return []

    def summary(self) -> Dict[str, Any]:
        """End-of-run facts in plain Python types (for summary.json and the diagnosis)."""
        return {}

    # -- checkpoints -----------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """What a resumed run needs to go on measuring exactly as if never stopped: tensors
        and plain Python values only (``torch.load(weights_only=True)`` reads it back).
        Probes that keep nothing between steps keep the default, ``{}``."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; call it after :meth:`attach` (attach resets state)."""


def leaf_modules(model: nn.Module) -> Iterator[tuple]:
    """(name, module) of modules with no children: the layers whose outputs we measure."""
    for name, module in model.named_modules():
        if not any(True for _ in module.children()):
            yield (name or type(module).__name__), module


def weight_matrices(model: nn.Module) -> Iterator[tuple]:
    """(name, parameter) of trainable weights with ``dim >= 2``: Linear/Conv kernels, embeddings.

    Biases and norm scales are left out: "how much did a layer's weights move" is about these.
    """
    for name, param in model.named_parameters():
        if param.requires_grad and param.dim() >= 2:
            yield name, param


def first_weight_layer(model: nn.Module, name: Optional[str] = None) -> tuple:
    """(name, module) of the layer that first sees the input: ``name`` if given, else the first
    module, in registration order, that owns a weight with ``dim >= 2``.

    Registration order is execution order for ``nn.Sequential`` and for models that define
    their layers in the order they use them; pass ``name`` for any other model. ``name=""``
    is the model itself (its input).
    """
    modules = dict(model.named_modules())
    if name is not None:
        if name not in modules:
            raise ProbeError(f"the model has no submodule named {name!r}")
        return name, modules[name]
    for mod_name, module in modules.items():
        if any(p.dim() >= 2 for p in module.parameters(recurse=False)):
            return mod_name, module
    raise ProbeError(f"{type(model).__name__} has no layer with a weight matrix; pass the layer's name")


def first_tensor(output: Any) -> Optional[torch.Tensor]:
    """The tensor a layer produced, looking inside tuples, lists and dicts (first one found)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        for item in output:
            found = first_tensor(item)
            if found is not None:
                return found
    return None
