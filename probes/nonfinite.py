"""Non-finite sentinel: the first module and step where a NaN or Inf appears.

What is checked when, and why that order:

* **Every step, the loss and the parameter gradients.** A NaN or Inf in a layer's output
  reaches the loss in practice (NaN survives ReLU, pooling, dropout's zeros and every
  weighted sum; an Inf meets another or a zero and becomes NaN), and a non-finite backward
  shows in the gradients. Each gradient is reduced on the device to one flag,
  ``isfinite(g.sum())`` (one pass, no temporary; a finite tensor whose float32 sum overflows
  counts as Inf, and values that large overflow in the next step anyway), at ``end_step``
  (call ``monitor.step`` before zeroing the gradients in place), which reads the flags with
  one host sync. Parameters are small next to activations (the cnn: 1.2 M
  weights against ~33 M activation values a step at batch 128), so this costs little.
* **Layer outputs, only when needed.** Checking every layer's output every step cost ~3-7%
  of a cnn step on CPU (a full pass over each activation) for an answer needed once per run.
  Instead the sentinel keeps a reference to the inputs of each training forward pass; when
  :meth:`check_loss` finds the loss non-finite, the weights are still those of the forward
  pass (the optimizer has not stepped), so it runs that forward pass again on the same
  inputs, without gradients, with the RNG state and the buffers (BatchNorm's running
  statistics) put back afterwards, and names the first leaf module whose output is not
  finite.
* What this leaves out: an Inf that a ReLU turns into 0 and that reaches neither the loss
  nor a gradient changed nothing downstream and is not reported, on logging steps either
  (checking every layer output there would be one more pass over every activation, ~3% of
  a cnn logging step, for a value that harmed nothing).

:meth:`check_loss` is what lets the sentinel name the layer: call it after computing the loss
and before ``backward()`` (``train.py`` does). It reads one bool to the host, so a CUDA
loop waits there for its forward pass. Without it the sentinel still stops at the right
step and names the first non-finite gradient (backward order).

Once something was found the probe stops checking (it keeps the first).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .base import Probe, first_tensor, leaf_modules, suspended


def _finite(t: torch.Tensor) -> torch.Tensor:
    """0-dim bool on the device: no NaN/Inf in ``t`` (see the module docstring for why a sum)."""
    return torch.isfinite(t.sum(dtype=torch.float64 if t.dtype == torch.float64 else torch.float32))


@dataclass
class NonFiniteEvent:
    step: int
    where: str  # "activation" | "gradient" | "loss"
    name: str  # module name for activations, parameter name for gradients

    def describe(self) -> str:
        what = {"activation": "output of layer", "gradient": "gradient of parameter", "loss": "loss"}[self.where]
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
        """Check the loss before ``backward()``; if it is not finite, find the layer (see above)."""
        if self.event is not None or not self.measuring:
            return
        if bool(_finite(loss.detach())):  # the step's host sync for the forward pass
            return
        layer = self._first_bad_layer()
        self.event = NonFiniteEvent(self.step, *(("activation", layer) if layer else ("loss", "loss")))
        self._passes = []

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
        grads, self._grads = self._grads, []
        if self.event is not None or not grads:
            return
        finite = torch.stack([_finite(grad.detach()) for _, grad in grads])
        if bool(finite.all()):  # the one host sync for the backward pass
            return
        first = int((~finite).nonzero()[0])  # in backward order
        self.event = NonFiniteEvent(step, "gradient", grads[first][0])

    @property
    def tripped(self) -> bool:
        return self.event is not None

    def summary(self) -> Dict[str, Any]:
        if self.event is None:
            return {}
        return {"step": self.event.step, "where": self.event.where, "name": self.event.name,
                "message": self.event.describe()}
