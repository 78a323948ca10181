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

from .base import Probe, compiling, first_tensor, leaf_modules
from .held import Held, nonzero_somewhere, settled
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

    A unit that fired for a while and then died is not dead "since attach". So each unit's
    firing is also kept per logging interval (every training example from one logging step to
    the next, not only the logged batch). At the logging step that closes it, the interval's
    mask becomes each unit's last interval with a firing and its count of such intervals, on
    the device. The summary gives, per layer, the units silent in every interval of the recent
    window (the last ``recent_logs`` intervals, or the last fifth of them if that is more) and,
    for each that had fired before, since when and in what share of the intervals before.

    Cheap enough for every step, because a unit that fired in an interval cannot change
    anything more in it (nor, having fired, be dead since attach): a layer's hook watches only
    the units not seen firing in the current interval, and once every unit has fired it is
    removed until the next logging step. A healthy network pays for its first pass after
    each log (on a CPU a read of the first example only, see :func:`_fired`) and then nothing
    (not even a Python call per layer). A layer with a silent unit is read on every pass:
    knowing which units are left is a host read, free on a CPU, so there the read is of those
    units' slices only; on an accelerator it would be a sync, so there the hook reads the whole
    output on every pass until the logging step (no sync).

    On a CPU that read (``index_select``, ``any``, a host read: ~6 us in a loop of their own)
    made the hook cost 42-72 us a pass inside the benchmark's 1 ms MLP step (784-128-10,
    batch 32, one thread; see :mod:`probes.held` for why). So there, after the interval's first pass (read at once: in a
    healthy layer it removes the hook), the hook only holds the output (a ``detach`` and a few
    attribute reads) and the held outputs of a layer are read together (:mod:`probes.held`,
    :meth:`_fold_held`): joined in one buffer, the same read once; the hook is removed then if
    every unit has fired. They are read before anything reads or replaces the masks, and at the
    logging step that closes the interval. A pass's NaN output of a unit is not a firing of it
    (``amax`` is NaN), and in the joined outputs it could hide another pass's firing: then the
    held passes are read one by one. An output written in place before it was read is not
    read: its examples are counted in :attr:`unchecked` (in the summary as a layer's
    ``unchecked_examples``), since a unit reported dead may have fired there. Measured on that
    MLP (the hook's time a step over 900 steps, several runs on a busy 2-core machine): 46-76 us
    before, 23-36 us now, of which 16-28 us the pass that holds and the rest a read of 64 held
    outputs (0.45-0.6 ms; profiled: joining them 0.16 ms, ``index_select`` 0.06 ms, the rest
    mostly Python).

    Under ``torch.compile`` a layer's hook is traced into the graph as plain tensor updates
    (two masks OR-ed in place: no Python counter, no data-dependent index, so no guard changes
    and no recompilation) and stays there, since removing a hook from a compiled module would
    recompile it. ``examples`` counts the training examples of the model's passes (the first
    tensor argument's first dimension).

    Args:
        recent_logs: the fewest logging intervals that make the recent window.
    """

    name = "dead_units"
    state = {"seen_nonzero": "any", "examples": "sum", "_interval": "any", "last_fired": "max",
             "fired_intervals": "max", "logged_steps": "same", "unchecked": "sum"}
    traceable = True  # its hooks make plain tensor updates when compiled
    works_between_logs = False  # end_step closes an interval at logging steps only; its hooks run anyway

    def __init__(self, recent_logs: int = 3) -> None:
        super().__init__()
        self.recent_logs = recent_logs
        self._seen: Dict[str, torch.Tensor] = {}  # per module: units seen firing since attach
        self._open: Dict[str, torch.Tensor] = {}  # per module: units seen firing since the last logging step
        self.last_fired: Dict[str, torch.Tensor] = {}  # per module: last logging step whose interval it fired in
        self.fired_intervals: Dict[str, torch.Tensor] = {}  # per module: how many intervals each unit fired in
        self.logged_steps: List[int] = []  # the logging steps that closed an interval
        self._unchecked: Dict[str, int] = {}  # per module: examples whose output was written in place, not read
        self._relus: Dict[str, nn.Module] = {}
        self._layer_hooks: Dict[str, Any] = {}  # the layers watched now (those with units left in the interval)
        self._left: Dict[str, torch.Tensor] = {}  # CPU: indices of the units not yet fired in this interval
        self._examples = 0  # examples of eager training passes
        self._examples_compiled: Optional[torch.Tensor] = None  # the same for compiled passes, on the device
        self._compiled = False  # a compiled graph runs the layer hooks: never remove them (a recompilation)
        self._held = Held(self._fold_held)

    # -- hooks ---------------------------------------------------------------------------
    def _on_attach(self, model: nn.Module) -> None:
        self._seen, self._open, self.last_fired, self.fired_intervals = {}, {}, {}, {}
        self.logged_steps, self._left, self._examples, self._compiled = [], {}, 0, False
        self._held = Held(self._fold_held)
        self._relus = {name: module for name, module in leaf_modules(model) if isinstance(module, RELU_TYPES)}
        self._unchecked = dict.fromkeys(self._relus, 0)  # every layer: the same keys on every rank
        if not self._relus:
            return
        device = next((t.device for t in [*model.parameters(), *model.buffers()]), torch.device("cpu"))
        self._examples_compiled = torch.zeros((), dtype=torch.long, device=device)
        self._model_hook(model, self._on_model_input)
        self._arm_layers()

    def _on_detach(self) -> None:
        while self._layer_hooks:
            self._layer_hooks.popitem()[1].remove()

    def _arm_layers(self) -> None:
        """Watch every layer (again): a new interval starts with no unit seen firing in it."""
        for name, module in self._relus.items():
            if name not in self._layer_hooks:
                hook = partial(self._guard_forward, partial(self._on_output, name), False, False)
                self._layer_hooks[name] = module.register_forward_hook(hook)

    def _on_model_input(self, args: tuple, kwargs: dict) -> None:
        x = args[0] if args and isinstance(args[0], torch.Tensor) else first_tensor(args) or first_tensor(kwargs)
        if x is None or not x.dim():
            return
        if compiling():
            if self._examples_compiled is not None:
                self._examples_compiled += x.shape[0]
            return
        self._examples += x.shape[0]

    def _on_output(self, name: str, module: nn.Module, inputs: tuple, output: Any) -> None:
        out = output if type(output) is torch.Tensor else first_tensor(output)
        if out is None or out.dim() < 2:
            return
        if compiling():
            out = out.detach()
            unit_dim = out.dim() - 1 if out.dim() == 3 else 1
            seen, interval = self._seen.get(name), self._open.get(name)
            if seen is not None and interval is not None and seen.numel() == out.shape[unit_dim]:
                fired = out.amax(dim=[d for d in range(out.dim()) if d != unit_dim]) > 0
                seen |= fired
                interval |= fired
                self._compiled = True
            return
        # After the interval's first pass (read at once: in a healthy layer it removes the hook),
        # a layer with units left is read on every CPU pass: its output is held instead and read
        # with the next passes' in one go (probes.held). Python reads only, on every such pass.
        left = self._left.get(name)
        if left is not None:
            if self._seen[name].shape[0] != out.shape[-1 if out.dim() == 3 else 1]:
                return  # another width than the first call (a module reused on other shapes): not comparable
            if self._held.keep(name, out.detach() if out.requires_grad else out, out.shape[0]):
                return
        self._read(name, out.detach())

    def _read(self, name: str, out: torch.Tensor, joined: bool = False) -> bool:
        """Fold a ReLU output (one pass's, or with ``joined`` several passes' joined by a fold)
        into the layer's masks; on a CPU, find the units left in the interval and remove the hook
        when none is. False (and nothing changed): ``joined`` has a NaN where a unit is read,
        which could hide another pass's positive entry of that unit from ``amax`` (a pass with
        a NaN entry of a unit does not count as a firing of it): read the passes one by one."""
        unit_dim = out.dim() - 1 if out.dim() == 3 else 1
        others = [d for d in range(out.dim()) if d != unit_dim]
        seen = self._seen.get(name)
        if seen is None:
            interval = _fired(out, others)
            self._seen[name] = interval.clone()
            self._open[name] = interval
        elif seen.numel() != out.shape[unit_dim]:
            return True  # another width than the first call (a module reused on other shapes): not comparable
        else:
            interval = self._open[name]
            left = self._left.get(name)
            # Only the slices of the units not fired yet in this interval (CPU: exactly those), where
            # they are blocks of memory: a (B, F) output, or a contiguous conv output's channels. A
            # channels_last output's channel is every C-th element: gathering a few of them cost ~7x
            # a whole reduction pass on CPU, so it is read whole.
            if left is not None and (out.dim() == 2 or (unit_dim == 1 and out.is_contiguous())):
                picked = out.index_select(unit_dim, left)
                if not (nonzero_somewhere(picked) if joined else bool(picked.any())):
                    return True  # the usual step: none of them fired, nothing changes (CPU: free)
                fired = picked.amax(dim=others)
                if joined and bool(fired.isnan().any()):
                    return False
                interval.index_put_((left,), fired > 0)
            elif left is None:  # the interval's first pass: the first example first (CPU)
                interval |= _fired(out, others)
            else:  # units known to be silent so far: the first example alone would not settle it
                fired = out.amax(dim=others)
                if joined and bool(fired.isnan().any()):
                    return False
                interval |= fired > 0
            seen |= interval
        if host_reads_are_free(interval.device):
            left = torch.nonzero(~interval).flatten()  # free on a CPU
            if left.numel() or self._compiled:
                self._left[name] = left
            else:  # every unit fired in this interval: nothing to learn until the next one
                self._left.pop(name, None)
                handle = self._layer_hooks.pop(name, None)
                if handle is not None:
                    handle.remove()
        return True

    def _fold_held(self, name: str, held: List[torch.Tensor], changed: int) -> None:
        """Read a layer's outputs held since the last fold (:class:`probes.held.Held`), joined
        into one tensor where their shapes allow. An output written in place after its pass is
        not read (what the pass saw is gone): its examples are counted in ``unchecked``."""
        self._unchecked[name] = self._unchecked.get(name, 0) + changed
        if not held:
            return
        joined = self._held.join(held)
        if joined is None or not self._read(name, joined, joined=True):
            for out in held:
                self._read(name, out)

    def end_step(self, step: int) -> None:
        """At a logging step, close the interval: which units fired in it (device ops only)."""
        if not self._logging or not self._relus:
            return
        self._settle()  # the interval's held passes
        self.logged_steps.append(step)
        for name, interval in self._open.items():
            last = self.last_fired.get(name)
            if last is None or last.numel() != interval.numel():
                last = self.last_fired[name] = torch.full_like(interval, -1, dtype=torch.long)
                self.fired_intervals[name] = torch.zeros_like(last)
            last.masked_fill_(interval, step)
            self.fired_intervals[name] += interval
            interval.zero_()  # in place: a compiled graph keeps updating this very tensor
        self._left = {}
        self._arm_layers()

    # -- state ---------------------------------------------------------------------------
    # What the hooks hold is read first (Probe._settle) whenever the masks or counts are read or set.
    seen_nonzero = settled("_seen", "Per ReLU layer seen, a bool mask of its units: positive in some example "
                                    "since attach.")
    _interval = settled("_open", "Per ReLU layer, the units seen firing since the last logging step (checkpointed).")
    unchecked = settled("_unchecked", """Per ReLU layer, the examples whose output was written in place
        between its pass and the read of the held outputs (:mod:`probes.held`): not read, so a unit
        reported dead may have fired there (0 but in such a loop; the summary's ``unchecked_examples``).""")

    @property
    def examples(self) -> Dict[str, int]:
        """Per ReLU layer seen, the training examples of the model's passes since attach
        (compiled passes counted on the device: reading them is a sync on an accelerator)."""
        total = self._examples + (int(self._examples_compiled) if self._examples_compiled is not None else 0)
        return {name: total for name in self.seen_nonzero}

    @examples.setter
    def examples(self, saved: Dict[str, int]) -> None:
        self._examples = max(saved.values(), default=0) if isinstance(saved, dict) else int(saved)
        if self._examples_compiled is not None:
            self._examples_compiled.zero_()

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if "unchecked" not in state:  # a checkpoint of a version that held no outputs: none unchecked
            state = {**state, "unchecked": dict(self._unchecked)}
        super().load_state_dict(state)
        self._left = {}  # which units are left in the interval: found again at the next pass
        if self._model is not None:
            self._arm_layers()

    def summary(self) -> Dict[str, Any]:
        seen_nonzero = self.seen_nonzero
        if not seen_nonzero:
            return {}
        layers = {}
        examples = self.examples
        for name, seen in seen_nonzero.items():
            dead = torch.nonzero(~seen).flatten().tolist()
            layers[name] = {"units": seen.numel(), "dead": len(dead), "dead_units": dead,
                            "examples": examples.get(name, 0)}
            if self._unchecked.get(name):
                layers[name]["unchecked_examples"] = self._unchecked[name]
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


def _fired(out: torch.Tensor, others: List[int]) -> torch.Tensor:
    """Per unit, whether any of its entries in ``out`` (a ReLU's output) is positive.

    A ReLU's output is >= 0, so "some entry nonzero" is "the largest entry > 0": one reduction
    with no temporary (``(out != 0).any`` makes a bool copy, and for a conv's channels a
    transposed one: ~7x slower on a CPU). A NaN is not > 0. On a CPU, where reading the answer
    is free, the first example is read first: in a healthy layer every unit fires there, and
    the pass that opens each logging interval then reads 1/B of the output, not all of it
    (logging every step, the cnn's three ReLUs cost 5.7 ms a step for that pass on one thread).
    """
    if out.shape[0] > 1 and host_reads_are_free(out.device):
        first = out[:1].amax(dim=others) > 0
        if bool(first.all()):
            return first.reshape(-1)
    return out.amax(dim=others) > 0
