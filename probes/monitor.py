"""A set of probes attached together, stepped together and logged to one sink.

The monitor owns the step counter and the logging schedule. Between logging steps it only
appends the (device) loss to a list: no host sync, no copies. On a logging step it
collects every probe's device records and moves them to the host in one transfer.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Union

import torch
from torch import nn

from .base import Probe
from .records import Record, Scalar, to_host
from .schedule import Schedule, as_schedule


class Monitor:
    """Attach several probes to a model and log them every ``every`` steps.

    Usage::

        monitor = Monitor([ActivationStats(), GradientStats()], sink=TensorBoardSink("runs/x"), every=100)
        with monitor.attach(model):
            for x, y in batches:
                ...; loss.backward(); optimizer.step()
                monitor.step(loss)
    """

    def __init__(self, probes: Iterable[Probe], sink: Any = None, every: Union[int, Schedule] = 100) -> None:
        self.probes: List[Probe] = list(probes)
        names = [p.name for p in self.probes]
        if len(set(names)) != len(names):
            raise ValueError(f"two probes share a name in {names}; give each a distinct name")
        self.sink = sink
        self.schedule = as_schedule(every)
        self.global_step = 0
        self._losses: List[tuple] = []
        self.model: Optional[nn.Module] = None

    def __getitem__(self, name: str) -> Probe:
        for probe in self.probes:
            if probe.name == name:
                return probe
        raise KeyError(f"no probe named {name!r}; have {[p.name for p in self.probes]}")

    def attach(self, model: nn.Module) -> "Monitor":
        attached: List[Probe] = []
        try:
            for probe in self.probes:
                probe.attach(model)
                attached.append(probe)
        except BaseException:
            for probe in attached:
                probe.detach()
            raise
        self.model = model
        self._start(self.global_step)
        return self

    def detach(self) -> None:
        for probe in self.probes:
            probe.detach()
        self.model = None

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.flush()
        finally:
            self.detach()

    @property
    def logging(self) -> bool:
        """Whether the step now running is a logging step (the probes' hooks are registered)."""
        return bool(self.schedule(self.global_step))

    def _start(self, step: int) -> None:
        logging = bool(self.schedule(step))
        for probe in self.probes:
            probe.start_step(step, logging)

    def step(self, loss: Optional[torch.Tensor] = None) -> None:
        """Mark the end of a training step (after ``optimizer.step()``)."""
        step = self.global_step
        if loss is not None:
            self._losses.append((step, loss.detach().float().reshape(())))
        for probe in self.probes:
            probe.end_step(step)
        if self.schedule(step):
            self._log(step)
        self.global_step = step + 1
        self._start(self.global_step)

    def _log(self, step: int) -> None:
        records: List[Record] = [Scalar("train/loss", s, v) for s, v in self._losses]
        self._losses = []
        for probe in self.probes:
            records.extend(probe.collect(step))
        host = to_host(records)
        if self.sink is not None and host:
            self.sink.write(host)

    def flush(self) -> None:
        """Write what is pending (losses of steps since the last log) and flush the sink."""
        if self._losses:
            pending = [Scalar("train/loss", s, v) for s, v in self._losses]
            self._losses = []
            if self.sink is not None:
                self.sink.write(to_host(pending))
        if self.sink is not None:
            self.sink.flush()

    def summary(self) -> Dict[str, Any]:
        return {p.name: p.summary() for p in self.probes if p.summary()}
