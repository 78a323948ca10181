"""The three-line entry point: ``with probes.watch(model, "runs/x", optimizer=opt): ...``."""
from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Union

import torch
from torch import nn

from .activations import ActivationStats
from .base import Probe, expect_module
from .dead_input import DeadInputs
from .dead_units import DeadUnits
from .frozen import FrozenWeights
from .gradients import GradientStats
from .inputs import InputStats
from .monitor import Monitor
from .nonfinite import NonFiniteSentinel
from .outputs import OutputStats
from .schedule import Schedule
from .sinks import MemorySink, TensorBoardSink
from .update_ratio import UpdateRatio
from .weight_change import WeightChange

#: Probes by name; ``watch(probes="all")`` attaches one of each.
PROBES: Dict[str, type] = {
    "activations": ActivationStats,
    "gradients": GradientStats,
    "nonfinite": NonFiniteSentinel,
    "weight_change": WeightChange,
    "update_ratio": UpdateRatio,
    "frozen": FrozenWeights,
    "dead_inputs": DeadInputs,
    "dead_units": DeadUnits,
    "inputs": InputStats,
    "outputs": OutputStats,
}


def make_probes(choice: Union[str, Iterable[Union[str, Probe]]] = "all") -> list:
    """Probe instances from ``"all"``, or from names and/or ready-made probes."""
    if isinstance(choice, str):
        choice = list(PROBES) if choice == "all" else [choice]
    made = []
    for item in choice:
        if isinstance(item, Probe):
            made.append(item)
        elif item in PROBES:
            made.append(PROBES[item]())
        else:
            raise ValueError(f"unknown probe {item!r}; choose from {', '.join(PROBES)} or pass Probe instances")
    return made


def watch(model: nn.Module, log_dir: Optional[str] = None, every: Union[int, Schedule] = 100,
          probes: Union[str, Iterable[Union[str, Probe]]] = "all",
          optimizer: Optional[torch.optim.Optimizer] = None, sink: Any = None) -> Monitor:
    """Attach probes to ``model`` and return the attached :class:`Monitor` (a context manager).

    Args:
        log_dir: TensorBoard directory; without it (and without ``sink``) records are kept
            in a :class:`MemorySink` at ``monitor.sink``.
        every: logging interval in steps, or a ``step -> bool`` schedule.
        probes: ``"all"``, or names from :data:`PROBES` and/or :class:`Probe` instances.
        optimizer: if given, steps are counted by a hook on ``optimizer.step()`` and the loop
            needs no call (``monitor.log_loss(loss)`` adds the loss curve); otherwise call
            ``monitor.step(loss)`` after each ``optimizer.step()``.
    """
    expect_module(model)
    monitor = Monitor(make_probes(probes), sink=sink, every=every)
    monitor.attach(model, optimizer=optimizer)  # before any writer or file exists: a failure leaves nothing
    if sink is None:
        try:
            monitor.sink = TensorBoardSink(log_dir) if log_dir is not None else MemorySink()
        except BaseException:
            monitor.detach()
            raise
        monitor.close_sink = True
    return monitor
