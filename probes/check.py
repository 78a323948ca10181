"""Static checks before training: the model, the loss and one batch, looked at once.

Some faults are there before the first step: a softmax fed to a loss that applies its own, a
softmax over a single unit, raw 0-255 pixels, a log-loss on a linear output. One forward and
backward pass of an example batch shows each of them, through the same rules (and thresholds)
that judge a training run's statistics (:mod:`probes.rules.io`), plus what only a single
pass shows plainly: a loss that is not finite, or a gradient that is exactly zero everywhere.

Nothing of the model changes: the pass runs with every probe silenced, the gradients the
parameters held are put back, and so are the random number generators and the buffers
(BatchNorm's running statistics); no optimizer steps.
"""
from __future__ import annotations

import contextlib
import math
from functools import partial
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
from torch import nn

from .base import expect_module, first_tensor, leaf_modules, suspended, unwrap
from .findings import Finding, link
from .inputs import STATS, input_stats
from .outputs import FORM, GRAD, as_rows, gradient_shape, output_form
from .rules import io
from .rules.common import RunFacts
from .structure import describe

_SOFTMAX = (nn.Softmax, nn.LogSoftmax, nn.Softmin)


def check(model: nn.Module, loss_fn: Callable[..., torch.Tensor], batch: Any) -> List[Finding]:
    """Findings about the model, the loss and the data, from one pass of ``batch``.

    Args:
        model: the model, as it will be trained (its train/eval mode is used as it is).
        loss_fn: called as ``loss_fn(model(inputs), targets)``; a loss per example is averaged.
        batch: ``(inputs, targets)``; inputs a tensor, a tuple of positional arguments or a dict
            of keyword arguments.
    """
    expect_module(model)
    model = unwrap(model)
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise TypeError("check() takes batch=(inputs, targets), as the loss will be called: "
                        "loss_fn(model(inputs), targets)")
    inputs, targets = batch
    with _untouched(model):
        facts = _one_pass(model, loss_fn, inputs, targets)
    findings = io.abnormal_input(facts["run"]) + io.output_activation(facts["run"]) + io.improper_loss(facts["run"])
    findings += _single_unit_softmax(facts, findings) + _pass_findings(facts, findings)
    for f in findings:
        f.evidence.update(source="probes.check (before training)", first_seen_step=None)
    return link(findings)


@contextlib.contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Every probe silent; afterwards the parameters' gradients, the buffers and the random
    number generators put back as they were."""
    params = list(model.parameters())
    grads = [(p, p.grad) for p in params]
    for p in params:
        p.grad = None
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    devices = sorted({t.device.index or 0 for t in [*params, *model.buffers()] if t.device.type == "cuda"})
    try:
        with torch.random.fork_rng(devices=devices), suspended():
            yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for p, g in grads:
            p.grad = g


def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _one_pass(model: nn.Module, loss_fn: Callable[..., torch.Tensor], inputs: Any, targets: Any) -> Dict[str, Any]:
    """Forward, loss and backward of one batch; what they showed, as plain facts."""
    seen: Dict[str, Any] = {"single_unit_softmax": [], "first_non_finite": None, "loss_error": None}

    def watch(name: str, module: nn.Module, args: tuple, output: Any) -> None:
        x, out = first_tensor(args), first_tensor(output)
        if isinstance(module, _SOFTMAX) and x is not None and x.dim() > 0:
            dim = module.dim if module.dim is not None else (0 if x.dim() in (0, 1, 3) else 1)
            if x.shape[dim] == 1:
                seen["single_unit_softmax"].append(name)
        if seen["first_non_finite"] is None and out is not None and out.is_floating_point() and \
                not bool(torch.isfinite(out.detach()).all()):
            seen["first_non_finite"] = name

    handles = [m.register_forward_hook(partial(watch, n)) for n, m in leaf_modules(model)]
    try:
        output = _call(model, inputs)
    finally:
        for h in handles:
            h.remove()
    summary: Dict[str, Any] = {}
    x = first_tensor(inputs if not isinstance(inputs, dict) else list(inputs.values()))
    if x is not None and x.is_floating_point() and x.dim() >= 1 and x.numel():
        row, biggest = input_stats(x.detach().float())
        summary["inputs"] = {**dict(zip(STATS, row.tolist())), "max_abs": float(biggest), "logs": 1,
                             "steps": [], "shape": list(x.shape)}
    out = first_tensor(output)
    grad: List[Optional[torch.Tensor]] = [None]
    if out is not None and out.is_floating_point() and out.dim() >= 1 and out.numel():
        rows = as_rows(out.detach()).float()
        finite = bool(torch.isfinite(rows).all())
        summary["outputs"] = {"units": rows.shape[-1], "logs": 1, "steps": [], "finite_logs": int(finite),
                              "grad_logs": 0}
        if finite:
            summary["outputs"].update(zip(FORM, output_form(rows).tolist()))
        if out.requires_grad:
            out.register_hook(lambda g: grad.__setitem__(0, g.detach()))
    loss_value = None
    try:
        loss = loss_fn(output, targets)
        loss_value = loss.float().mean() if isinstance(loss, torch.Tensor) else None
    except (RuntimeError, ValueError) as exc:
        seen["loss_error"] = str(exc).splitlines()[0]
    if loss_value is not None:
        seen["loss"] = float(loss_value.detach())
        if loss_value.requires_grad:
            loss_value.backward()
    if grad[0] is not None and "outputs" in summary and summary["outputs"]["finite_logs"]:
        g = as_rows(grad[0]).float()
        if bool((g != 0).any()):
            summary["outputs"].update(zip(GRAD, gradient_shape(as_rows(out.detach()).float(), g).tolist()),
                                      grad_logs=1)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    seen["grads"] = {n: (None if p.grad is None else float(p.grad.detach().float().norm())) for n, p in params}
    layout = describe(model)
    return {"run": RunFacts(summary, {}, list(layout["weights"]), layout), "seen": seen}


def _single_unit_softmax(facts: Dict[str, Any], found: List[Finding]) -> List[Finding]:
    """A softmax module over a dimension of size 1, wherever it is; named in the output's finding."""
    layers = facts["seen"]["single_unit_softmax"]
    if not layers:
        return []
    same = next((f for f in found if f.evidence.get("kind") == "single-unit softmax"), None)
    if same is not None:
        same.evidence["layers"] = layers
        same.message += f" (softmax module{'s' if len(layers) > 1 else ''}: {', '.join(layers)})"
        return []
    return [Finding(
        "improper-output-activation", "error",
        f"softmax over a dimension of size 1 in {', '.join(layers)}: its output is the constant 1 (log-softmax: 0) "
        f"whatever its input, so no gradient passes through it",
        {"layers": layers, "kind": "single-unit softmax"},
        cause="softmax normalises over the units of a row; over one unit it returns 1 identically",
        fix="apply softmax over the dimension of the classes (dim=-1), or use a sigmoid for a single unit")]


def _pass_findings(facts: Dict[str, Any], found: List[Finding]) -> List[Finding]:
    """What the one pass shows on its own: a loss that fails or is not finite, gradients all 0."""
    seen, out = facts["seen"], []
    if seen["loss_error"]:
        o = facts["run"].summary.get("outputs") or {}
        bounded = o.get("unit_interval", 1.0) >= 1.0
        out.append(Finding(
            "improper-output-activation" if not bounded else "improper-loss", "error",
            f"the loss fails on the model's output: {seen['loss_error']}",
            {"error": seen["loss_error"], "kind": "loss raised"},
            cause="the loss expects another kind of output (probabilities in [0, 1], log-probabilities, logits) or "
                  "another target shape than it is given",
            fix="match the output activation to the loss: logits for cross_entropy / BCEWithLogitsLoss, sigmoid "
                "probabilities for BCELoss, log_softmax for nll_loss"))
        return out
    loss = seen.get("loss")
    if loss is not None and not math.isfinite(loss):
        where = seen["first_non_finite"]
        out.append(Finding(
            "non-finite", "error",
            f"the loss of the first batch is {loss}" + (f", first non-finite output at layer {where}" if where else
                                                        ": every layer's output is finite, the loss makes it"),
            {"where": "activation" if where else "loss", "name": where or "loss", "step": None,
             "at_output": where is None},
            cause="an invalid operation in the model or the loss (log of 0 or of a negative number, division by 0) "
                  "or inputs so large that they overflow",
            fix="see the finding on the output or the input listed with it; compute the loss from logits"))
        return out
    grads = seen["grads"]
    if loss is not None and grads and all(g == 0 for g in grads.values() if g is not None):
        zero = sorted(n for n, g in grads.items() if g is not None)
        none = sorted(n for n, g in grads.items() if g is None)
        out.append(Finding(
            "zero-gradient", "error",
            f"the gradient of every parameter is exactly 0 on this batch ({len(zero)} with a zero gradient, "
            f"{len(none)} with none at all): nothing can learn",
            {"zero": zero, "no_gradient": none},
            cause="the loss does not depend on the parameters: a constant output (a softmax over one unit), a graph "
                  "cut by .detach()/.item(), or a dead layer",
            fix="look at the output layer and the loss; check the loss is computed from the model's output"))
    return out
