"""Non-finite sentinel: where a NaN or Inf started, found with no call in the user's loop.

What is checked when, and why that order:

* **Every step, the parameter gradients, before the optimizer uses them.** A NaN or Inf in
  a layer's output reaches the loss in practice (NaN survives ReLU, pooling, dropout's zeros
  and every weighted sum; an Inf meets another or a zero and becomes NaN), and so the
  gradients. Each gradient is reduced on the device to one flag, ``isfinite(g.sum())`` (one
  pass, no temporary; a finite tensor whose float32 sum overflows counts as Inf, and values
  that large overflow in the next step anyway), read with one host sync in a pre-step hook of
  every ``torch.optim`` optimizer (``register_optimizer_step_pre_hook``, removed on detach):
  there the weights are still those of the forward pass. Without a torch optimizer the check
  runs at ``end_step``, after the weights have moved.
* **Where it started, only when something is non-finite**, in this order: a parameter that
  is itself non-finite (it was so before the step: e.g. an earlier overflow, or a bad
  checkpoint); an input of the step's training forward pass that is non-finite (bad data);
  else the step's forward passes are run again on the same inputs, without gradients, with
  the RNG state and the buffers (BatchNorm's running statistics) put back afterwards, and the
  first leaf module whose output is not finite is named; else the first non-finite gradient
  (backward order). Checking every layer's output every step instead cost ~3-7% of a cnn step
  on CPU for an answer needed once per run.
* :meth:`check_loss` (optional; ``train.py`` calls it after the loss, before ``backward``)
  finds a non-finite loss one backward pass earlier, with the same localisation.
* What this leaves out: an Inf that a ReLU turns into 0 and that reaches neither the loss
  nor a gradient changed nothing downstream and is not reported.

Once something was found the probe stops checking (it keeps the first).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from .base import Probe, first_tensor, leaf_modules, suspended


def _finite(t: torch.Tensor) -> torch.Tensor:
    """0-dim bool on the device: no NaN/Inf in ``t`` (see the module docstring for why a sum)."""
    return torch.isfinite(t.sum(dtype=torch.float64 if t.dtype == torch.float64 else torch.float32))


@dataclass
class NonFiniteEvent:
    step: int
    where: str  # "parameter" | "input" | "activation" | "gradient" | "loss"
    name: str  # parameter name, input position, module name, parameter name, "loss"

    def describe(self) -> str:
        what = {"parameter": "parameter (before the step)", "input": "training input", "activation": "output of layer",
                "gradient": "gradient of parameter", "loss": "loss"}[self.where]
        return f"first NaN/Inf at step {self.step}: {what} {self.name}"


class NonFiniteSentinel(Probe):
    """Find the first layer output or parameter gradient that holds a NaN or Inf."""

    name = "nonfinite"
    state = {"_event_state": "same"}

    def __init__(self) -> None:
        super().__init__()
        self._passes: List[Tuple[tuple, dict]] = []  # inputs of this step's training forward passes
        self._grads: List[Tuple[str, torch.Tensor]] = []  # this step's gradients, in backward order
        self.event: Optional[NonFiniteEvent] = None

    def _on_attach(self, model: nn.Module) -> None:
        self._passes, self._grads = [], []
        self._forward_pre_hook(model, self._on_call, with_kwargs=True)
        for name, param in model.named_parameters():
            if param.requires_grad:
                self._grad_hook(param, partial(self._on_grad, name))
        self._handles.append(register_optimizer_step_pre_hook(self._before_optimizer_step))

    def _on_detach(self) -> None:
        self._passes, self._grads = [], []

    @property
    def _event_state(self) -> Optional[Dict[str, Any]]:
        return None if self.event is None else dataclasses.asdict(self.event)

    @_event_state.setter
    def _event_state(self, saved: Optional[Dict[str, Any]]) -> None:
        self.event = None if saved is None else NonFiniteEvent(**saved)
        self._passes, self._grads = [], []

    def _on_call(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if self.event is None:
            self._passes.append((args, kwargs))  # references only: the batch is alive anyway

    def _on_grad(self, name: str, param: torch.Tensor) -> None:
        if self.event is None and param.grad is not None:
            # A reference now, the sum at end_step: after the optimizer has just read every
            # gradient they are in cache (measured on the cnn: ~0.15 ms for all of them
            # there, ~1 ms summed one by one inside backward).
            self._grads.append((name, param.grad))

    def _on_start(self, step: int, logging: bool) -> None:
        self._passes = []

    def check_loss(self, loss: torch.Tensor) -> None:
        """Check the loss before ``backward()``; if it is not finite, find where it started."""
        if self.event is not None or not self.measuring:
            return
        if bool(_finite(loss.detach())):  # a host sync after the forward pass
            return
        self.event = self._locate(self.step) or NonFiniteEvent(self.step, "loss", "loss")
        self._passes, self._grads = [], []

    def _before_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._check_gradients(self.step)

    def _check_gradients(self, step: int) -> None:
        grads, self._grads = self._grads, []
        if self.event is not None or not grads:
            return
        finite = torch.stack([_finite(grad.detach()) for _, grad in grads])
        if bool(finite.all()):  # the one host sync for the backward pass
            return
        first = int((~finite).nonzero()[0])  # in backward order
        self.event = self._locate(step) or NonFiniteEvent(step, "gradient", grads[first][0])
        self._passes = []

    def _locate(self, step: int) -> Optional[NonFiniteEvent]:
        """The first non-finite parameter, training input or layer output; None if all are finite."""
        if self._model is None:
            return None
        for name, param in self._model.named_parameters():
            if param.is_floating_point() and not bool(torch.isfinite(param.detach()).all()):
                return NonFiniteEvent(step, "parameter", name)
        for args, kwargs in self._passes:
            for i, x in enumerate([*args, *kwargs.values()]):
                if isinstance(x, torch.Tensor) and x.is_floating_point() and not bool(torch.isfinite(x).all()):
                    return NonFiniteEvent(step, "input", str(i) if i < len(args) else list(kwargs)[i - len(args)])
        layer = self._first_bad_layer()
        return NonFiniteEvent(step, "activation", layer) if layer else None

    def _first_bad_layer(self) -> Optional[str]:
        """Run this step's forward passes again and name the first leaf module with a non-finite
        output; ``None`` if every output is finite."""
        model = self._model
        if model is None or not self._passes:
            return None
        found: List[str] = []

        def watch(name: str, module: nn.Module, inputs: tuple, output: Any) -> None:
            out = first_tensor(output)
            if not found and out is not None and out.is_floating_point() and not bool(torch.isfinite(out).all()):
                found.append(name)

        handles = [m.register_forward_hook(partial(watch, n)) for n, m in leaf_modules(model)]
        buffers = [(b, b.clone()) for b in model.buffers()]
        devices = sorted({t.device.index or 0 for t in [*model.parameters(), *model.buffers()]
                          if t.device.type == "cuda"})
        try:
            with torch.no_grad(), suspended(), torch.random.fork_rng(devices=devices):
                for args, kwargs in self._passes:
                    model(*args, **kwargs)
                    if found:
                        break
        finally:
            for h in handles:
                h.remove()
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)
        return found[0] if found else None

    def end_step(self, step: int) -> None:
        self._check_gradients(step)  # no torch optimizer stepped (its pre-step hook checks otherwise)

    @property
    def tripped(self) -> bool:
        return self.event is not None

    def summary(self) -> Dict[str, Any]:
        if self.event is None:
            return {}
        return {"step": self.event.step, "where": self.event.where, "name": self.event.name,
                "message": self.event.describe()}
