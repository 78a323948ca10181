"""Optimizers configured as the questions' Keras 2 (or Theano) code ran them.

torch's Adadelta and RMSprop use the same update formulas as Keras 2 once their
defaults are set (eps outside the square root for RMSprop in both: Keras 2's
``p - lr * g / (sqrt(a) + eps)``; tf.keras >= 2.3 moved it inside). Adam and the Theano
momentum SGD differ from torch's formulation and are written out here.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch.optim import Optimizer

KERAS_EPSILON = 1e-7


class KerasAdam(Optimizer):
    """Keras 2 Adam: ``lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t)``, ``p -= lr_t * m / (sqrt(v) + eps)``.

    torch's Adam adds eps to sqrt(v_hat) instead of sqrt(v), i.e. its effective epsilon is
    ``sqrt(1 - b2^t)`` times Keras'. With eps = 1e-7 this matters only for tiny gradients,
    which is exactly the regime the scaled-conv question is about, so we follow Keras.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = KERAS_EPSILON) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - formula in the class docstring
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                m, v, g = state["m"], state["v"], p.grad
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                lr_t = group["lr"] * math.sqrt(1 - b2**t) / (1 - b1**t)
                p.addcdiv_(m, v.sqrt().add_(group["eps"]), value=-lr_t)
        return loss


class ClassicMomentum(Optimizer):
    """SGD with classic momentum as the original Theano code wrote it:
    ``v <- mu * v - lr * g; w <- w + v``.

    Does torch's SGD match? ``torch.optim.SGD(momentum=mu)`` (dampening 0, not Nesterov)
    keeps ``b <- mu * b + g; w <- w - lr * b``. With ``v = -lr * b`` that is the same
    trajectory while lr is constant (tests/test_models.py checks 50 steps agree to 1e-6), but
    it rounds differently, and when lr changes during training torch rescales the whole
    accumulated velocity at once while Theano's form applies the new lr to new gradients
    only. So we made the Theano form literally here instead of configuring torch's SGD.
    """

    def __init__(self, params: Iterable, lr: float = 0.01, momentum: float = 0.99) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                v = self.state[p].setdefault("velocity", torch.zeros_like(p))
                v.mul_(group["momentum"]).add_(p.grad, alpha=-group["lr"])
                p.add_(v)
        return loss


def build_optimizer(name: str, params: Iterable, lr: float) -> Optimizer:
    """Build an optimizer by name with the Keras 2 defaults other than ``lr``."""
    if name == "adadelta":  # Keras 2: rho=0.95, epsilon=K.epsilon()=1e-7 (torch default eps 1e-6)
        # foreach: one fused call per state tensor kind instead of a Python loop over parameters
        # (the cnn's step 20 -> 16 ms on one CPU thread; torch picks it by itself on CUDA only)
        return torch.optim.Adadelta(params, lr=lr, rho=0.95, eps=KERAS_EPSILON, foreach=True)
    if name == "rmsprop":  # Keras 2: rho=0.9 (torch alpha), eps outside sqrt in both
        return torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=KERAS_EPSILON, foreach=True)
    if name == "adam":
        return KerasAdam(params, lr=lr)
    if name == "momentum":
        return ClassicMomentum(params, lr=lr, momentum=0.99)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose from {sorted(OPTIMIZERS)}")


OPTIMIZERS = ("adadelta", "rmsprop", "adam", "momentum", "sgd")
