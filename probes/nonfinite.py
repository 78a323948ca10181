"""Non-finite sentinel: where a NaN or Inf started, found with no call in the user's loop.

What is checked when, and why that order:

* **Every step, the loss**, when the loop hands it over (``monitor.log_loss(loss)``,
  ``monitor.step(loss)`` or :meth:`NonFiniteSentinel.check_loss`). A NaN or Inf in a layer's
  output or a weight reaches the loss in practice (NaN survives ReLU, pooling, dropout's zeros
  and every weighted sum; an Inf meets another or a zero and becomes NaN); a non-finite
  gradient under a finite loss (e.g. the derivative of ``sqrt`` at 0) makes the weights
  non-finite at the optimizer step, and so the next step's loss. One number a step, whatever
  the model's size: no Python call per parameter, no pass over the gradients.

  On a CPU it is read at once (reading a CPU tensor is no device sync), so a non-finite loss
  is reported at its own step. A loss handed over only after ``optimizer.step()``
  (``monitor.step(loss)``) comes when the weights have moved; so on a CPU, when no loss came
  before the optimizer's pre-step hook, the model's output (the first tensor it returned) is
  checked there instead: one reduction of the output, no longer one number. On an accelerator reading it would be a sync, so the step's
  loss is only kept (a reference) and the losses are read together at the next logging step:
  the event is then reported at that logging step, at most the logging interval late, with
  the step of the first non-finite loss. :meth:`check_loss` reads at once everywhere (a sync:
  ``train.py`` calls it after the loss, before ``backward``, to stop on the first bad step),
  and so does asking :attr:`NonFiniteSentinel.tripped` or :meth:`summary`.
* **At every logging step, the parameter gradients**, before the optimizer uses them: one
  fused ``torch._foreach_norm`` over all of them and one read (a gradient whose norm
  overflows is checked element-wise before anything is reported), in a pre-step hook of
  ``torch.optim`` optimizers that hold the model's parameters
  (``register_optimizer_step_pre_hook``, removed on detach); without one, at the end of the
  logging step. This finds non-finite gradients that never reach the loss.
* **Where it started, only when something is non-finite**, in this order: a parameter that
  is itself non-finite (it was so before the step: e.g. an earlier overflow, or a bad
  checkpoint); an input of the step's training forward pass that is non-finite (bad data);
  else the step's forward passes are run again on the same inputs, without gradients,
  eagerly, with the RNG state and the buffers (BatchNorm's running statistics) put back
  afterwards, and the first leaf module whose output is not finite is named; else the first
  non-finite gradient (reverse registration order: backward's order in a feed-forward net).
  Parameters and the replay need the weights of the forward pass, so they are tried only
  before the optimizer step (:meth:`check_loss`, a loss given by ``log_loss`` before
  ``optimizer.step()``, the logging step's gradient check); a loss found non-finite after
  the step, or at a later logging step, is reported as the ``loss`` (or its ``input``).
  Under ``torch.compile`` the inputs of compiled passes are not kept (a Python list in a
  compiled graph would be a guard): there it names the parameter or gradient, else the loss.
* What this leaves out: an Inf that a ReLU turns into 0 and that reaches neither the loss
  nor a gradient changed nothing downstream and is not reported.

Once something was found the probe stops checking (it keeps the first).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from .base import Probe, compiling, eager, first_tensor, leaf_modules, suspended
from .stats import host_reads_are_free

#: On an accelerator, losses not read yet are stacked into one tensor per this many steps.
_CHUNK = 256


def _finite(t: torch.Tensor) -> torch.Tensor:
    """0-dim bool on the device: no NaN/Inf in ``t`` (a finite tensor whose float32 sum
    overflows counts as Inf: values that large overflow in the next step anyway)."""
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
    """Find the first loss, parameter, input, layer output or gradient that holds a NaN or Inf
    (see the module docstring for what is checked when)."""

    name = "nonfinite"
    state = {"_event_state": "same"}
    traceable = True  # when compiled its model hook does nothing (the loss and gradients are checked outside)

    def __init__(self) -> None:
        super().__init__()
        self._params: List[Tuple[str, torch.Tensor]] = []  # the model's trainable parameters, registration order
        self._passes: List[Tuple[tuple, dict]] = []  # inputs of this step's eager training forward passes
        self._loss: Optional[torch.Tensor] = None  # this step's loss, handed over and not checked yet
        self._checked: Optional[torch.Tensor] = None  # the loss check_loss read this step
        self._kept: List[Tuple[int, torch.Tensor]] = []  # accelerator: losses not read yet, with their steps
        self._chunks: List[Tuple[List[int], torch.Tensor]] = []  # the same, stacked _CHUNK at a time
        self._optimizers: Dict[int, bool] = {}  # id(optimizer) -> whether it steps one of the model's parameters
        self._grads_checked = -1  # the logging step whose gradients were checked
        self._stepped = -1  # the last step at which an optimizer of the model's parameters stepped
        self._output: Any = None  # what the model returned in this step's (eager) training pass
        self.event: Optional[NonFiniteEvent] = None

    def _on_attach(self, model: nn.Module) -> None:
        self._params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self._passes, self._loss, self._checked, self._kept, self._chunks = [], None, None, [], []
        self._optimizers, self._grads_checked, self._stepped = {}, -1, -1
        self._model_hook(model, self._on_call)
        self._handles.append(model.register_forward_hook(self._on_output))
        self._handles.append(register_optimizer_step_pre_hook(self._before_optimizer_step))

    def _on_detach(self) -> None:
        if self.event is None and (self._kept or self._chunks):
            self._read(self.step, moved=True, grads=False)  # the losses kept since the last log
        self._passes, self._loss, self._checked, self._kept, self._chunks = [], None, None, [], []

    @property
    def _event_state(self) -> Optional[Dict[str, Any]]:
        return None if self.event is None else dataclasses.asdict(self.event)

    @_event_state.setter
    def _event_state(self, saved: Optional[Dict[str, Any]]) -> None:
        self.event = None if saved is None else NonFiniteEvent(**saved)
        self._passes, self._loss, self._checked, self._kept, self._chunks = [], None, None, [], []

    # -- what the step hands over --------------------------------------------------------
    def _on_call(self, args: tuple, kwargs: dict) -> None:
        if not compiling() and self.event is None:
            self._passes.append((args, kwargs))  # references only: the batch is alive anyway

    def _on_output(self, module: nn.Module, args: tuple, output: Any) -> None:
        if not compiling() and self.event is None and module.training and torch.is_grad_enabled():
            self._output = output  # a reference: checked only if no loss comes before the optimizer step

    def _on_start(self, step: int, logging: bool) -> None:
        if self._passes:
            self._passes = []
        self._loss = self._checked = self._output = None

    def see_loss(self, loss: torch.Tensor) -> None:
        if self.event is None and loss is not self._checked:
            self._loss = loss

    def check_loss(self, loss: torch.Tensor) -> None:
        """Check the loss before ``backward()`` (a host read, on any device); if it is not finite,
        find where it started."""
        if self.event is not None or not self.measuring:
            return
        self._checked = loss
        if bool(_finite(loss.detach())):
            return
        self.event = self._locate(self.step, moved=False) or NonFiniteEvent(self.step, "loss", "loss")
        self._passes = []

    # -- checks --------------------------------------------------------------------------
    def _before_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if self._model is not None and self._steps_model(optimizer):
            self._stepped = self.step
            if self.event is None:
                self._check(moved=False)

    def end_step(self, step: int) -> None:
        # a loss given after the step; the logging step's check if no optimizer ran it
        if self.event is None:
            self._check(moved=self._stepped == step)

    def _steps_model(self, optimizer: Any) -> bool:
        key = id(optimizer)
        holds = self._optimizers.get(key)
        if holds is None:
            mine = {id(p) for _, p in self._params}
            holds = self._optimizers[key] = any(id(p) in mine for group in getattr(optimizer, "param_groups", [])
                                                for p in group["params"])
        return holds

    def _check(self, moved: bool) -> None:
        """The step's loss if one was handed over (read now on a CPU, kept elsewhere); on a logging
        step, the gradients and the losses kept. ``moved``: the optimizer has updated the weights."""
        step, loss, self._loss = self.step, self._loss, None
        output, self._output = self._output, None
        if loss is None and not moved and output is not None:
            # no loss yet, the weights about to move: the model's output stands in for it (one
            # reduction of the output, where reading is free), so that the search can still run
            out = first_tensor(output)
            if out is not None and out.is_floating_point() and host_reads_are_free(out.device) \
                    and not bool(_finite(out.detach())):
                self.event = self._locate(step, moved) or NonFiniteEvent(step, "activation", "(the model's output)")
                self._passes = []
                return
        if loss is not None:
            if host_reads_are_free(loss.device):  # a CPU tensor: reading it is no sync
                if not (math.isfinite(loss.item()) if loss.numel() == 1 else bool(_finite(loss.detach()))):
                    self.event = self._locate(step, moved) or NonFiniteEvent(step, "loss", "loss")
                    self._passes = []
                    return
            else:
                self._keep(step, loss.detach())
        if self._logging and self._grads_checked != step:
            self._grads_checked = step
            self._read(step, moved, grads=True)

    def _keep(self, step: int, loss: torch.Tensor) -> None:
        self._kept.append((step, loss if loss.dim() == 0 else loss.float().sum()))  # a sum keeps any NaN/Inf
        if len(self._kept) >= _CHUNK:  # a long interval: one stacked tensor instead of thousands
            steps, values = zip(*self._kept)
            self._chunks.append((list(steps), torch.stack([v.float() for v in values])))
            self._kept = []

    def _read(self, step: int, moved: bool, grads: bool) -> None:
        """One host read of every loss kept and, with ``grads``, of the gradients' norms."""
        chunks, self._chunks = self._chunks, []
        if self._kept:
            steps, values = zip(*self._kept)
            chunks.append((list(steps), torch.stack([v.float() for v in values])))
            self._kept = []
        named = [(n, p.grad.detach()) for n, p in self._params if p.grad is not None] if grads else []
        if not chunks and not named:
            return
        device = (chunks[0][1] if chunks else named[0][1]).device
        flags = [torch.isfinite(values.to(device)) for _, values in chunks]
        if named:
            norms = torch._foreach_norm([g for _, g in named], 2)
            flags.append(torch.isfinite(torch.stack([n.to(device, torch.float32) for n in norms])))
        finite = torch.cat(flags).tolist()  # the one read
        loss_steps = [s for steps, _ in chunks for s in steps]
        bad_loss = next((s for s, ok in zip(loss_steps, finite) if not ok), None)
        if bad_loss is not None:
            # its own step before the optimizer step: the whole search; else what is left of it
            self.event = (self._locate(step, moved) if bad_loss == step else None) or NonFiniteEvent(bad_loss, "loss", "loss")
        else:
            bad = [(n, g) for (n, g), ok in zip(named, finite[len(loss_steps):]) if not ok]
            bad = [(n, g) for n, g in bad if not bool(torch.isfinite(g).all())]  # not just a norm that overflowed
            if bad:
                self.event = self._locate(step, moved) or NonFiniteEvent(step, "gradient", bad[-1][0])
        if self.event is not None:
            self._passes = []

    def _locate(self, step: int, moved: bool) -> Optional[NonFiniteEvent]:
        """The first non-finite parameter, training input or layer output; None if all are finite
        (``moved``: the weights are no longer those of the forward pass: inputs only)."""
        if self._model is None:
            return None
        if not moved:
            for name, param in self._model.named_parameters():
                if param.is_floating_point() and not bool(torch.isfinite(param.detach()).all()):
                    return NonFiniteEvent(step, "parameter", name)
        for args, kwargs in self._passes:
            for i, x in enumerate([*args, *kwargs.values()]):
                if isinstance(x, torch.Tensor) and x.is_floating_point() and not bool(torch.isfinite(x).all()):
                    return NonFiniteEvent(step, "input", str(i) if i < len(args) else list(kwargs)[i - len(args)])
        layer = None if moved else self._first_bad_layer()
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
            with torch.no_grad(), suspended(), eager(), torch.random.fork_rng(devices=devices):
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

    @property
    def tripped(self) -> bool:
        """Whether a NaN/Inf was found; reads the losses kept since the last log (a sync on an
        accelerator: the caller asks now)."""
        if self.event is None and (self._kept or self._chunks):
            self._read(self.step, moved=True, grads=False)
        return self.event is not None

    def summary(self) -> Dict[str, Any]:
        if not self.tripped:
            return {}
        return {"step": self.event.step, "where": self.event.where, "name": self.event.name,
                "message": self.event.describe()}
