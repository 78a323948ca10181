"""What the model outputs, and what the loss does with it, read off the output and its gradient.

The loss is the user's code, out of reach of any hook; its gradient at the model's output is
not. Its shape tells what kind of loss it is, whatever its name or wrapper:

* a loss that expects logits (softmax cross-entropy) is unchanged when a constant is added to
  a row, so its gradient sums to zero over each row, and it equals ``c * (softmax(o) - y)``;
* a squared error on a one-hot target is ``c * (o - y)``.

With the output's own form (rows that are probabilities: a softmax; log-probabilities: a
log-softmax; values in [0, 1]; exact zeros: a ReLU) that names the classic mismatches: a
softmax fed to a loss that applies its own (``nn.CrossEntropyLoss``), a squared error on
softmax probabilities, a softmax over a single unit (the constant 1).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from .base import Probe, first_tensor

# per logged forward pass: the output's form
FORM = ("probability_rows", "log_probability_rows", "unit_interval", "zero_fraction", "negative_fraction",
        "one_fraction")
# per logged backward pass: the gradient at the output
GRAD = ("grad_row_sum", "grad_zero_fraction", "grad_single_entry_rows", "logit_loss_fit", "squared_error_fit")
PROB_TOL = 1e-3  # a row is a probability vector when >= 0 and summing to 1 within this


class OutputStats(Probe):
    """On logging steps, the model's output (its first tensor) and the gradient of the loss at it.

    Rows: a ``(B, C)`` output has ``B`` rows of ``C`` units, a ``(B, T, V)`` one ``B * T`` rows
    of ``V`` (the last dimension), a ``(B, C, H, W)`` one a row per position, of ``C``;
    a ``(B,)`` output rows of one unit. Per logged step, the output's form:

    * ``probability_rows``: fraction of rows that are >= 0 and sum to 1 (a softmax);
    * ``log_probability_rows``: rows <= 0 whose logsumexp is 0 (a log-softmax);
    * ``unit_interval``, ``zero_fraction``, ``negative_fraction``, ``one_fraction`` (exactly 1):
      of the elements;

    and of the gradient (rows with a nonzero gradient):

    * ``grad_row_sum``: ``sum_i |sum_j g_ij| / sum_ij |g_ij|``: 0 for a loss that expects logits;
    * ``grad_zero_fraction``: elements exactly 0;
    * ``grad_single_entry_rows``: rows whose gradient has one nonzero entry: a loss that reads
      the target's output alone (``nll_loss``, ``-log(p[target])``);
    * ``logit_loss_fit``: mean cosine of ``g_i`` with ``softmax(o_i) - e_t`` (``t``: the most
      negative entry, the target), 1 for softmax cross-entropy on ``o``;
    * ``squared_error_fit``: the same with ``o_i - e_t``, 1 for a squared error on a one-hot target.

    Means over the logged steps stay on the device until :meth:`summary`; a step whose output
    holds a NaN or Inf is left out of them (the non-finite sentinel reports it), and so is one
    whose gradient at the output is all zero.
    """

    name = "outputs"
    state = {"_form": "sum", "_grad": "sum", "_logs": "sum", "_form_n": "sum", "_grad_n": "sum", "_units": "same",
             "_steps": "same"}

    def __init__(self) -> None:
        super().__init__()
        self._form: Optional[torch.Tensor] = None
        self._grad: Optional[torch.Tensor] = None
        self._logs = 0
        self._form_n: Optional[torch.Tensor] = None  # logged steps with a finite output (on the device)
        self._grad_n: Optional[torch.Tensor] = None  # ... with a finite gradient at the output
        self._units = 0
        self._steps: List[int] = []

    def _on_attach(self, model: nn.Module) -> None:
        self._form, self._grad, self._form_n, self._grad_n = None, None, None, None
        self._logs, self._units, self._steps = 0, 0, []

    def _on_arm(self, model: nn.Module) -> None:
        self._forward_hook(model, self._on_output, armed=True)

    def _on_output(self, module: nn.Module, inputs: tuple, output: Any) -> None:
        out = first_tensor(output)
        if out is None or not out.is_floating_point() or out.dim() < 1 or out.numel() == 0:
            return
        rows = as_rows(out.detach()).float()
        self._form, self._form_n = _accumulate(self._form, self._form_n, output_form(rows),
                                               torch.isfinite(rows).all())
        self._logs += 1
        self._units = rows.shape[-1]
        self._steps = [self._steps[0] if self._steps else self.step, self.step]
        if out.requires_grad:
            out.register_hook(partial(self._on_grad, rows))

    def _on_grad(self, rows: torch.Tensor, grad: torch.Tensor) -> None:
        if not self.measuring:
            return
        g = as_rows(grad.detach()).float()
        self._grad, self._grad_n = _accumulate(self._grad, self._grad_n, gradient_shape(rows, g),
                                               torch.isfinite(rows).all() & (g != 0).any())

    def summary(self) -> Dict[str, Any]:
        if self._form is None or not self._logs:
            return {}
        out: Dict[str, Any] = {"units": self._units, "logs": self._logs, "steps": list(self._steps)}
        finite = int(self._form_n)
        out["finite_logs"] = finite
        if finite:
            out.update(zip(FORM, (self._form / finite).tolist()))
        grad_logs = int(self._grad_n) if self._grad_n is not None else 0
        out["grad_logs"] = grad_logs
        if grad_logs:
            out.update(zip(GRAD, (self._grad / grad_logs).tolist()))
        return out


def _accumulate(total: Optional[torch.Tensor], count: Optional[torch.Tensor], stats: torch.Tensor,
                ok: torch.Tensor):
    """Add ``stats`` to ``total`` and 1 to ``count`` where ``ok`` (a 0-d bool), on the device (no sync)."""
    ok = ok.double()
    stats = torch.where(ok > 0, stats, torch.zeros_like(stats))
    if total is None:
        return stats, ok
    return total + stats, count + ok


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """``t`` as (rows, units): units are the last dimension of a 3-D tensor, else dimension 1."""
    if t.dim() == 1:
        return t.reshape(-1, 1)
    unit_dim = t.dim() - 1 if t.dim() == 3 else 1
    return t.movedim(unit_dim, -1).reshape(-1, t.shape[unit_dim])


def output_form(rows: torch.Tensor) -> torch.Tensor:
    """The :data:`FORM` statistics of an output's (rows, units), as one float64 tensor."""
    sums = rows.sum(-1)
    return torch.stack([
        ((rows >= -1e-6).all(-1) & ((sums - 1).abs() <= PROB_TOL)).float().mean(),
        ((rows <= 1e-6).all(-1) & (torch.logsumexp(rows, -1).abs() <= PROB_TOL)).float().mean(),
        ((rows >= 0) & (rows <= 1)).float().mean(),
        (rows == 0).float().mean(),
        (rows < 0).float().mean(),
        (rows == 1).float().mean()]).double()


def gradient_shape(rows: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The :data:`GRAD` statistics of the loss's gradient ``g`` at an output's ``rows``.

    Rows whose gradient is zero are left out; so are rows with a NaN or Inf, except from the
    count of single-entry rows (``-log p[target]`` at ``p = 0`` is an infinite gradient at the
    target alone: still a loss that reads the target's output alone)."""
    finite = torch.isfinite(g).all(-1)
    size = torch.where(finite, g.abs().sum(-1), torch.zeros_like(g[:, 0]))
    live = finite & (size > 0)
    n = live.sum().clamp_min(1)

    def mean_over_live(per_row: torch.Tensor) -> torch.Tensor:
        return torch.where(live, per_row, torch.zeros_like(per_row)).sum() / n

    entries = (g != 0).sum(-1)
    single = ((entries == 1).float().sum() / (entries > 0).sum().clamp_min(1))
    safe = torch.where(live.unsqueeze(-1), g, torch.zeros_like(g))
    # weighted by each row's size: a confident row's tiny gradient is mostly rounding error
    row_sum = safe.sum(-1).abs().sum() / safe.abs().sum().clamp_min(_TINY)
    if g.shape[-1] > 1:
        target = torch.zeros_like(g).scatter_(-1, safe.argmin(-1, keepdim=True), 1.0)
        clean = torch.nan_to_num(rows, nan=0.0, posinf=0.0, neginf=0.0)
        logit_fit = mean_over_live(_cosine(safe, torch.softmax(clean, -1) - target))
        square_fit = mean_over_live(_cosine(safe, clean - target))
    else:
        logit_fit = square_fit = g.new_zeros(())
    return torch.stack([row_sum, (g == 0).float().mean(), single, logit_fit, square_fit]).double()


_TINY = torch.finfo(torch.float32).tiny


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity (0 where either row is zero)."""
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(_TINY)
