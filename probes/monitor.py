"""A set of probes attached together, stepped together and logged to one sink.

The monitor owns the step counter and the logging schedule. Between logging steps it only
appends the (device) loss to a list: no host sync, no copies. On a logging step it
collects every probe's device records and moves them to the host in one transfer.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Union

import torch
from torch import nn

from . import tags
from .base import Probe, ProbeError, expect_module
from .distributed import reduce_records
from .records import HostScalar, Record, Scalar, to_host
from .schedule import Schedule, as_schedule
from .sinks import Sink
from .structure import describe


#: Statistics the diagnosis rules read, kept on the monitor (a few scalars per layer a logging step).
_KEPT_KINDS = frozenset({tags.GRAD_NORM, tags.OUTPUT_GRAD_NORM, tags.ACTIVATION_SATURATED_FRACTION})


class Monitor:
    """Attach several probes to a model and log them every ``every`` steps.

    Usage::

        monitor = Monitor([ActivationStats(), GradientStats()], sink=TensorBoardSink("runs/x"), every=100)
        with monitor.attach(model):
            for x, y in batches:
                ...; loss.backward(); optimizer.step()
                monitor.step(loss)
    """

    def __init__(self, probes: Iterable[Probe], sink: Optional[Sink] = None, every: Union[int, Schedule] = 100,
                 close_sink: bool = False) -> None:
        self.probes: List[Probe] = list(probes)
        names = [p.name for p in self.probes]
        if len(set(names)) != len(names):
            raise ValueError(f"two probes share a name in {names}; give each a distinct name")
        self.sink = sink
        self.schedule = as_schedule(every)
        self.global_step = 0
        self._losses: List[tuple] = []
        self._pending_loss: Optional[torch.Tensor] = None
        self._optimizer_hook: Any = None
        self.close_sink = close_sink
        self.model: Optional[nn.Module] = None
        self._weight_order: List[str] = []  # the model's weight matrices, input first (for the diagnosis)
        #: the model's layout for the diagnosis (:func:`probes.structure.describe`), read at attach
        self.structure: Dict[str, Any] = {}
        #: findings of :meth:`check` (before training), part of :meth:`diagnose` and :meth:`report`
        self.checks: List[Any] = []
        #: the scalars the diagnosis rules read, ``{tag: [(step, value), ...]}``, kept whatever the sink
        self.kept: Dict[str, List[tuple]] = {}
        self._sink_closed = False

    def get(self, name: str, default: Optional[Probe] = None) -> Optional[Probe]:
        """The probe called ``name``, or ``default`` when this monitor has none."""
        return next((p for p in self.probes if p.name == name), default)

    def __getitem__(self, name: str) -> Probe:
        probe = self.get(name)
        if probe is None:
            raise KeyError(f"no probe named {name!r}; have {[p.name for p in self.probes]}")
        return probe

    def attach(self, model: nn.Module, optimizer: Optional[torch.optim.Optimizer] = None) -> "Monitor":
        """Attach every probe to ``model``.

        With ``optimizer`` given, each ``optimizer.step()`` ends a monitor step by itself
        (a step post-hook), so the loop needs no call; ``log_loss(loss)`` adds the loss.
        Without it, call :meth:`step` after every ``optimizer.step()``.
        """
        expect_module(model)
        if self.model is not None:
            raise ValueError("this Monitor is already attached; detach() it first")
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
        self.structure = describe(model)
        self._weight_order = list(self.structure["weights"])
        if optimizer is not None:
            self._optimizer_hook = optimizer.register_step_post_hook(self._after_optimizer_step)
        self._start(self.global_step)
        return self

    def detach(self) -> None:
        """Remove every hook (probes' and the optimizer's); safe to call twice."""
        if self._optimizer_hook is not None:
            self._optimizer_hook.remove()
            self._optimizer_hook = None
        for probe in self.probes:
            probe.detach()
        self.model = None

    def _after_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        loss, self._pending_loss = self._pending_loss, None
        self.step(loss)

    def log_loss(self, loss: torch.Tensor) -> None:
        """Record the current step's loss when steps are counted by the optimizer hook."""
        self._pending_loss = loss

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.flush()
        finally:
            self.detach()
            if self.close_sink and self.sink is not None:
                self.sink.close()
                self._sink_closed = True

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
        if self.model is None:
            raise ProbeError("this monitor is detached (its `with` block has ended, or detach() was called): "
                             "attach it to a model before stepping it")
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
        host = self._gather(step)
        if self.sink is not None and host:
            self.sink.write(host)

    def _keep(self, host: list) -> None:
        losses = [r for r in host if isinstance(r, HostScalar) and r.tag == tags.LOSS]
        if losses:  # the last loss of each log and the window's mean, min, max: bounded over a long run
            step, values = losses[-1].step, [r.value for r in losses]
            self.kept.setdefault(tags.LOSS, []).append((step, values[-1]))
            for tag, value in ((tags.LOSS_WINDOW_MEAN, sum(values) / len(values)), (tags.LOSS_WINDOW_MIN, min(values)),
                               (tags.LOSS_WINDOW_MAX, max(values))):
                self.kept.setdefault(tag, []).append((step, value))
        for r in host:
            if isinstance(r, HostScalar) and tags.split(r.tag)[0] in _KEPT_KINDS:
                self.kept.setdefault(r.tag, []).append((r.step, r.value))

    def _gather(self, step: int) -> list:
        """The losses and every probe's records since the last log, reduced over processes and
        moved to the host in one transfer (every rank reduces, sink or not)."""
        records: List[Record] = [Scalar(tags.LOSS, s, v) for s, v in self._losses]
        self._losses = []
        for probe in self.probes:
            records.extend(probe.collect(step))
        host = to_host(reduce_records(records)) if records else []
        self._keep(host)
        return host

    def flush(self) -> None:
        """Write what is pending (losses and per-step probe records of the steps since the
        last log, e.g. :class:`WeightChange`'s) and flush the sink (nothing once it is closed:
        a closed TensorBoard writer would open a new event file)."""
        if self._sink_closed:
            return
        host = self._gather(self.global_step - 1)
        if self.sink is not None:
            if host:
                self.sink.write(host)
            self.sink.flush()

    def state_dict(self) -> Dict[str, Any]:
        """The step counter, the losses not yet logged and every probe's state, for a checkpoint."""
        return {"global_step": self.global_step, "losses": list(self._losses),
                "probes": {p.name: p.state_dict() for p in self.probes}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Go on from a checkpoint: call it after :meth:`attach` (attach resets the probes)."""
        if set(state["probes"]) != {p.name for p in self.probes}:
            raise ValueError(f"the checkpoint has probes {sorted(state['probes'])}, "
                             f"this monitor {sorted(p.name for p in self.probes)}")
        self.global_step, self._losses = state["global_step"], list(state["losses"])
        for probe in self.probes:
            probe.load_state_dict(state["probes"][probe.name])
        if self.model is not None:
            self._start(self.global_step)

    def summary(self) -> Dict[str, Any]:
        """End-of-run facts of every probe, ``{probe name: facts}`` in plain Python types."""
        return {p.name: p.summary() for p in self.probes if p.summary()}

    def check(self, loss_fn: Any, batch: Any) -> list:
        """:func:`probes.check` of the attached model, its findings kept for :meth:`diagnose`."""
        from .check import check

        if self.model is None:
            raise ProbeError("this monitor is detached: attach it to a model before check()")
        self.checks = check(self.model, loss_fn, batch)
        return self.checks

    def diagnose(self, pair_scan: Optional[Dict[str, Any]] = None) -> list:
        """The findings of the run so far (:func:`probes.diagnose`), with those of :meth:`check`,
        whatever the sink."""
        from .diagnosis import diagnose

        return diagnose(self.summary(), scalars=self.kept, weight_order=self._weight_order, pair_scan=pair_scan,
                        structure=self.structure, checks=self.checks)

    def report(self) -> str:
        """What the probes found, in sentences: steps measured, then the findings, worst first."""
        from .diagnosis import report

        return f"probes: {self.global_step} steps measured; " + report(self.diagnose())
