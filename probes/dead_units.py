"""ReLU units that never fired: output exactly zero for every training example seen.

A unit whose ReLU output is zero for every example passes no gradient back, so the weights
feeding it never learn (a "dead ReLU"). That is a different cause from a weight whose
*input* is always zero (:class:`probes.dead_input.DeadInputs`): the diagnosis keeps them
apart, which is why this is measured per unit rather than read off zero-gradient fractions.
"""
from __future__ import annotations

import bisect
import math
from functools import partial
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from .base import Probe, first_tensor, leaf_modules
from .stats import host_reads_are_free

#: Modules whose output is exactly zero wherever their input is not positive.
RELU_TYPES: Tuple[type, ...] = (nn.ReLU, nn.ReLU6)


class DeadUnits(Probe):
    """Per ReLU module, a bool mask of the units that were ever nonzero, via a forward hook.

    A unit is one entry of dimension 1 of the output: a feature of a Linear layer's
    ``(B, F)`` output, a channel of a Conv's ``(B, C, H, W)`` (a channel is dead only if it
    is zero at every position of every example); for 3-D outputs ``(B, T, F)`` the last
    dimension. Every training forward pass is counted; passes without gradients
    (evaluation) or inside :func:`probes.suspended` are not.

    Cheap enough for every step: once a unit has fired it can never be dead again, so each
    pass looks only at the units that have not fired yet. In a healthy network that is all
    of them on the first step and none soon after (then the hook reads nothing at all);
    with a few dead units, their slices alone. Reading a whole ReLU output from memory on
    every step cost ~1% of a cnn step on CPU. The list of units left to watch is refreshed
    from the device mask every step on a CPU (reading it back is free there) and on
    logging steps elsewhere (a sync); in between it may still hold units that fired since,
    which costs a little reading, never a wrong answer.

    A unit that fired for a while and then died is not dead "since attach". So each unit's
    firing is also kept per logging interval (every training example from one logging step to
    the next, not only the logged batch): a second mask, reset at each logging step, watched
    the same way (a full read of the output at the interval's first pass, then only the units
    not seen firing in it; on an accelerator, where finding those would be a sync, a full read
    every step). At the logging step it becomes each unit's last interval with a firing and its
    count of such intervals, on the device. The summary gives, per layer, the units silent in
    every interval of the recent window (the last ``recent_logs`` intervals, or the last fifth
    of them if that is more) and, for each that had fired before, since when and in what share
    of the intervals before.

    Args:
        recent_logs: the fewest logging intervals that make the recent window.
    """

    name = "dead_units"
    state = {"seen_nonzero": "any", "examples": "sum", "_interval": "any", "last_fired": "max",
             "fired_intervals": "max", "logged_steps": "same"}

    def __init__(self, recent_logs: int = 3) -> None:
        super().__init__()
        self.recent_logs = recent_logs
        self.seen_nonzero: Dict[str, torch.Tensor] = {}
        self.examples: Dict[str, int] = {}
        self._watch: Dict[str, torch.Tensor] = {}  # per module: indices of units not seen firing (maybe stale)
        self._interval: Dict[str, torch.Tensor] = {}  # per module: units seen firing since the last logging step
        self.last_fired: Dict[str, torch.Tensor] = {}  # per module: last logging step whose interval it fired in
        self.fired_intervals: Dict[str, torch.Tensor] = {}  # per module: how many intervals each unit fired in
        self.logged_steps: List[int] = []  # the logging steps that closed an interval

    def _on_attach(self, model: nn.Module) -> None:
        self.seen_nonzero, self.examples, self._watch = {}, {}, {}
        self._interval, self.last_fired, self.fired_intervals, self.logged_steps = {}, {}, {}, []
        for name, module in leaf_modules(model):
            if isinstance(module, RELU_TYPES):
                self._forward_hook(module, partial(self._on_output, name))

    def _on_start(self, step: int, logging: bool) -> None:
        for name, seen in self.seen_nonzero.items():
            watch = self._watch.get(name)
            if watch is not None and not watch.numel():
                continue  # every unit has fired: nothing can change
            if logging or host_reads_are_free(seen.device):
                self._watch[name] = torch.nonzero(~seen).flatten()  # a sync where reads are not free

    def _on_output(self, name: str, module: nn.Module, inputs: tuple, output: Any) -> None:
        out = first_tensor(output)
        if out is None or out.dim() < 2:
            return
        out = out.detach()
        unit_dim = out.dim() - 1 if out.dim() == 3 else 1
        others = [d for d in range(out.dim()) if d != unit_dim]
        seen: Optional[torch.Tensor] = self.seen_nonzero.get(name)
        fired = None
        if seen is None:
            # A ReLU's output is >= 0, so "some entry nonzero" is "the largest entry > 0": one
            # reduction pass with no temporary (``(out != 0).any`` makes a bool copy, and for a
            # conv's channels a transposed one: ~7x slower on CPU). A NaN is not > 0.
            fired = out.amax(dim=others) > 0
            self.seen_nonzero[name] = fired.clone()
        elif seen.numel() != out.shape[unit_dim]:
            return  # another width than the first call (a module reused on other shapes): not comparable
        else:
            watch = self._watch.get(name)
            if watch is None:
                seen |= out.amax(dim=others) > 0
            elif watch.numel():
                seen[watch] |= out.index_select(unit_dim, watch).amax(dim=others) > 0
        self.examples[name] = self.examples.get(name, 0) + out.shape[0]
        self._in_interval(name, out, unit_dim, others, fired)

    def _in_interval(self, name: str, out: torch.Tensor, unit_dim: int, others: list,
                     fired: Optional[torch.Tensor]) -> None:
        """Add this pass's firing units to the interval's mask."""
        interval = self._interval.get(name)
        if interval is None:
            self._interval[name] = fired.clone() if fired is not None else out.amax(dim=others) > 0
        elif host_reads_are_free(interval.device):
            left = torch.nonzero(~interval).flatten()  # free on a CPU
            if left.numel():
                interval[left] |= out.index_select(unit_dim, left).amax(dim=others) > 0
        else:
            interval |= out.amax(dim=others) > 0

    def end_step(self, step: int) -> None:
        """At a logging step, close the interval: which units fired in it (device ops only)."""
        if not self._logging or not self._interval:
            return
        self.logged_steps.append(step)
        for name, interval in self._interval.items():
            last = self.last_fired.get(name)
            if last is None or last.numel() != interval.numel():
                last = self.last_fired[name] = torch.full_like(interval, -1, dtype=torch.long)
                self.fired_intervals[name] = torch.zeros_like(last)
            last.masked_fill_(interval, step)
            self.fired_intervals[name] += interval
        self._interval = {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._watch = {}  # refreshed from the restored masks at the next step

    def summary(self) -> Dict[str, Any]:
        if not self.seen_nonzero:
            return {}
        layers = {}
        for name, seen in self.seen_nonzero.items():
            dead = torch.nonzero(~seen).flatten().tolist()
            layers[name] = {"units": seen.numel(), "dead": len(dead), "dead_units": dead,
                            "examples": self.examples.get(name, 0)}
            if name in self.last_fired:
                layers[name].update(self._recent(self.last_fired[name].tolist(),
                                                 self.fired_intervals[name].tolist()))
        return {"layers": layers}

    def _recent(self, last_fired: List[int], fired_intervals: List[int]) -> Dict[str, Any]:
        """Units silent in every interval of the recent window; for each that fired before, the
        share of the intervals before its silence that it fired in (a unit that fired in nearly
        every one and then stopped has died; one that fired in few may just be sparse)."""
        steps = self.logged_steps
        window = max(self.recent_logs, math.ceil(len(steps) / 5))
        if len(steps) <= window:
            return {}
        start = steps[-window]
        silent = [i for i, s in enumerate(last_fired) if s < start]
        # the first interval after each silent unit's last firing: from there on it stayed silent
        after = {i: bisect.bisect_right(steps, last_fired[i]) for i in silent if last_fired[i] >= 0}
        return {"recent_dead": len(silent), "recent_window": [start, steps[-1], window],
                "recent_dead_units": silent,
                # [unit, share of the n intervals before its silence it fired in, the first step of
                # its first silent interval (silent on every training example since), n]
                "fired_then_silent": [[i, fired_intervals[i] / n, steps[n - 1] + 1, n] for i, n in after.items()]}
