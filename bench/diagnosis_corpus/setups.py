"""What a setup is: how to build one seeded trial of it, and what it should be diagnosed with."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from .data import Batch


@dataclass
class Trial:
    """One training run to make: the user's model, optimizer, loss and batches, the logging
    interval, and optionally something between backward and the optimizer step
    (``before_step()``: gradient clipping), a change after each step (``after_step(step)``: a
    learning-rate schedule) and a pair scan at the end (``scan(model) -> facts``)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor]
    batches: List[Batch]
    every: int
    after_step: Optional[Callable[[int], None]] = None
    before_step: Optional[Callable[[], Any]] = None
    scan: Optional[Callable[[nn.Module], Dict[str, Any]]] = None


@dataclass
class Setup:
    """A named setup: ``expected`` is the finding id a faulty one must get (None: healthy, which
    must get no warning or error); ``fault`` says, from the fault's definition, what is wrong."""

    name: str
    build: Callable[[int], Trial]
    expected: Optional[str] = None
    fault: str = ""
    tags: List[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return self.expected is None


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
