"""A set of probes attached together, stepped together and logged to one sink.

The monitor owns the step counter and the logging schedule. Between logging steps it only
keeps a reference to the (device) loss: no host sync, no copies, no conversion; it calls
only the probes that have per-step work. On a logging step it collects every probe's device
records and moves them to the host in one transfer.

Under ``torch.compile`` a logging step runs eagerly: the monitor sets
``torch.compiler.set_stance("force_eager")`` from the start of a logging step to its end and
puts the previous stance back, so the logging hooks run as in an eager model and record the
same statistics; the steps in between run the compiled graph (see :mod:`probes.base` for
what the per-step hooks do there). If the model was compiled before the hooks existed, the
compiled code may never call them: the monitor notices that no training pass reached the
per-step probes' hooks between two logs and warns (and, once, that a probe whose hooks cannot
be traced was left out of the compiled passes).
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, Iterable, List, Optional, Union

import torch
from torch import nn

from . import stats, tags
from .base import Probe, ProbeError, compile_used, compiling, expect_module
from .distributed import reduce_records
from .records import HostScalar, Record, Scalar, to_host
from .schedule import Schedule, as_schedule
from .sinks import Sink
from .structure import describe


#: The monitors now in a logging step, and the ``set_stance`` to undo when the last one leaves.
_EAGER_HOLDERS: set = set()
_EAGER_STANCE: List[Any] = [None]

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
        self._given_loss: Optional[torch.Tensor] = None  # the loss log_loss handed to the probes this step
        self._loss_probes: List[Probe] = []  # probes that take the loss (override see_loss)
        self._stepped_probes: List[Probe] = []  # probes with an end_step of their own
        self._stepped_between: List[Probe] = []  # those of them with work on steps that do not log
        self._quiet_probes: List[Probe] = []  # probes that start every step (hooks on every pass, _on_start)
        self._logging_step = True  # whether the step now running logs (so _start undoes its hooks)
        self._stance: Any = None  # the set_stance of a logging step, to undo at its end
        self._quiet_steps = 0  # steps since the last logging step ended
        self._warned_blind = False
        self._warned_untraced = False

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
        self._loss_probes = [p for p in self.probes if type(p).see_loss is not Probe.see_loss]
        self._stepped_probes = [p for p in self.probes if type(p).end_step is not Probe.end_step]
        self._stepped_between = [p for p in self._stepped_probes if p.works_between_logs]
        self._quiet_steps = 0
        self._quiet_probes = [p for p in self.probes if p._always_hooked or
                              (type(p)._on_start is not Probe._on_start and p.works_between_logs)]
        self._logging_step = True
        if optimizer is not None:
            self._optimizer_hook = optimizer.register_step_post_hook(self._after_optimizer_step)
        self._start(self.global_step)
        return self

    def detach(self) -> None:
        """Remove every hook (probes' and the optimizer's); safe to call twice."""
        if self._optimizer_hook is not None:
            self._optimizer_hook.remove()
            self._optimizer_hook = None
        self._eager_off()
        for probe in self.probes:
            probe.detach()
        self.model = None

    def _after_optimizer_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        loss, self._pending_loss = self._pending_loss, None
        self.step(loss)

    def log_loss(self, loss: torch.Tensor) -> None:
        """Record the current step's loss when steps are counted by the optimizer hook (call it
        before ``optimizer.step()``: the non-finite sentinel then checks it while the weights are
        still those of the forward pass)."""
        self._pending_loss = loss
        self._given_loss = loss
        for probe in self._loss_probes:
            probe.see_loss(loss)

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
        if logging:
            self._check_blind(step)
            self._eager_on()
            close = any(self.schedule(s) for s in range(max(0, step - stats.CLOSE_LOGS + 1), step))
            for probe in self.probes:
                probe.close_log = close
        elif self._stance is not None:  # e.g. a resumed run that starts between logs
            self._eager_off()
        if logging or self._logging_step:  # a logging step, or the one after (hooks to remove)
            for probe in self.probes:
                probe.start_step(step, logging)
        else:  # between logs only the probes with work on every step; the others learn the step
            for probe in self.probes:
                probe.step = step
            for probe in self._quiet_probes:
                probe.start_step(step, False)
        self._logging_step = logging

    def _eager_on(self) -> None:
        """Run this logging step eagerly, compiled code included (the model may be compiled later
        in the step: after attach, before the first call). The stance is process-wide, so it is
        shared: the first monitor in a logging step sets it, the last one out puts it back (two
        monitors whose logging steps overlap, e.g. train.py's ``--compare``, would otherwise
        leave ``force_eager`` on for good)."""
        if self._stance is not None or compiling():
            return
        if not _EAGER_HOLDERS:
            try:
                _EAGER_STANCE[0] = torch.compiler.set_stance("force_eager")
            except RuntimeError:  # called from inside a compiled region: leave the stance alone
                return
        _EAGER_HOLDERS.add(id(self))
        self._stance = True

    def _eager_off(self) -> None:
        if self._stance is None:
            return
        self._stance = None
        _EAGER_HOLDERS.discard(id(self))
        if not _EAGER_HOLDERS and _EAGER_STANCE[0] is not None:
            stance, _EAGER_STANCE[0] = _EAGER_STANCE[0], None
            stance.__exit__(None, None, None)  # the stance before the first monitor's logging step

    def _check_blind(self, step: int) -> None:
        """Warn once if steps passed since the last log with no training pass reaching the hooks
        while torch.compile is in use: compiled code that ignores the probes' hooks; and once if
        a compiled graph left out the per-step hooks of a probe that cannot be traced."""
        skipped = [p.name for p in self.probes if p._compiled_skip]
        if skipped and not self._warned_untraced:
            self._warned_untraced = True
            warnings.warn(
                f"probes: {', '.join(skipped)} cannot run inside torch.compile'd code: between logging steps "
                "the compiled model leaves out their per-step hooks, so they measure the logging steps only "
                "(which run eagerly)", RuntimeWarning, stacklevel=3)
        watched = [p for p in self.probes if p._always_hooked]  # probes whose hooks run on every training pass
        if self._quiet_steps and watched and not self._warned_blind and compile_used() and \
                not any(p._hook_calls or p._compiled_call for p in watched):
            self._warned_blind = True
            warnings.warn(
                f"probes: no training forward pass of the model reached the probes' hooks in the "
                f"{self._quiet_steps} steps before step {step}, so between logging steps they measured nothing. "
                "torch.compile keeps running code it traced before the hooks were added (Dynamo does not guard on them). Attach the "
                "probes before compiling the model, or call torch.compiler.reset() after attaching them. "
                "(Logging steps run eagerly and are measured.)", RuntimeWarning, stacklevel=3)

    def step(self, loss: Optional[torch.Tensor] = None) -> None:
        """Mark the end of a training step (after ``optimizer.step()``)."""
        if self.model is None:
            raise ProbeError("this monitor is detached (its `with` block has ended, or detach() was called): "
                             "attach it to a model before stepping it")
        step = self.global_step
        given, self._given_loss = self._given_loss, None
        if loss is not None:
            if loss is not given:
                for probe in self._loss_probes:
                    probe.see_loss(loss)
            self._losses.append((step, loss.detach()))  # a reference; converted when logged
        for probe in (self._stepped_probes if self._logging_step else self._stepped_between):
            probe.end_step(step)
        if self._logging_step:
            self._log(step)
            self._eager_off()
            self._quiet_steps = 0
            for probe in self.probes:
                probe._hook_calls, probe._compiled_call, probe._compiled_skip = 0, False, False
        else:
            self._quiet_steps += 1
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
        records: List[Record] = [Scalar(tags.LOSS, s, v if v.dim() == 0 and v.dtype == torch.float32
                                        else v.float().reshape(())) for s, v in self._losses]
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
