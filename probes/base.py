"""The small common base of every probe: attach, detach, hook bookkeeping, step moments.

A probe keeps all of its state on itself, never on the user's module, keeps every hook
handle it registers and removes them on :meth:`Probe.detach`, which may run any number of
times. The base owns the plumbing every probe needs (hook guards, call-count tags, records
and ``collect``, checkpoint state, the histogram sampler); subclasses write only the
measurement: hooks in :meth:`Probe._on_attach` (or :meth:`Probe._on_arm` for hooks that only
logging steps need) and the moments they use, all no-ops here.
"""
from __future__ import annotations

import contextlib
import sys
import threading
from functools import partial
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
from torch import nn

from . import stats, tags
from .records import Histogram, Record, Scalar

_suspension = threading.local()
#: The same depth for code that ``torch.compile`` traced: Dynamo cannot read a thread-local,
#: but it guards on a module global (a compiled frame entered under :func:`suspended` is
#: compiled once more for that case, then both are cached).
_SUSPENDED = 0


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """Silence every probe while the library itself runs the model (pair scans, evaluation).

    Hooks still fire under ``torch.func`` transforms, where touching the tensors they see
    would fail or measure the wrong thing, so hooks check this first.
    """
    global _SUSPENDED
    depth = getattr(_suspension, "depth", 0)
    _suspension.depth = depth + 1
    _SUSPENDED += 1
    try:
        yield
    finally:
        _suspension.depth = depth
        _SUSPENDED -= 1


def is_suspended() -> bool:
    # the process-wide count first: a hook asks on every pass, and a thread-local that was never
    # set (no suspension in this thread yet) is read through an AttributeError
    return _SUSPENDED > 0 and getattr(_suspension, "depth", 0) > 0


#: Whether this code is being traced by ``torch.compile`` (Dynamo) now: torch's own function,
#: which Dynamo reads as a constant while tracing (no wrapper: this runs on every step). Hooks
#: traced into a compiled graph run there on every call, as tensor operations only: they must
#: not keep Python counters (each value would become a guard, and a new value a
#: recompilation), read values back, or index by data (see :meth:`Probe._guard_forward`).
compiling: Callable[[], bool] = torch.compiler.is_compiling


def dynamo_loaded() -> bool:
    """Whether Dynamo is imported (torch.optim imports it too): without it nothing is compiled,
    and the probes do not import it themselves to find out."""
    return "torch._dynamo" in sys.modules


def compile_used() -> bool:
    """Whether Dynamo has compiled any frame in this process (torch.optim imports it anyway)."""
    if not dynamo_loaded():
        return False
    utils = sys.modules.get("torch._dynamo.utils")
    return utils is not None and utils.counters["frames"]["total"] > 0


@contextlib.contextmanager
def eager() -> Iterator[None]:
    """Run the model eagerly, even where it was compiled (``torch.compiler.set_stance("force_eager")``),
    e.g. to replay a forward pass with hooks a compiled graph would not call."""
    if not dynamo_loaded() or compiling():
        yield
        return
    stance = torch.compiler.set_stance("force_eager")
    try:
        yield
    finally:
        stance.__exit__(None, None, None)


class ProbeError(RuntimeError):
    """A probe was used in a way that cannot work (attached twice, detached model...)."""


#: How a declared state attribute combines over processes at the end of a run (see
#: :func:`probes.distributed.reduce_state`): ``"same"`` identical on every rank (weights,
#: parameter gradients: DDP keeps them so), ``"sum"`` (counts), ``"any"`` (OR of bool masks),
#: ``"max"``, ``"min"``. Dicts of such values reduce key by key.
STATE_REDUCTIONS = ("same", "sum", "any", "max", "min")


class Probe:
    """Base class: one measurement, attached to one model at a time.

    Moments, in the order a training step sees them: ``start_step(step, logging)`` before
    the step's forward pass (subclasses hook in with :meth:`_on_start`); hooks fire during
    forward/backward; ``end_step(step)`` after the optimizer step; ``collect(step)`` on
    logging steps only, returning the device-side records made with :meth:`_scalar` and
    :meth:`_histogram` since the last log.

    What a subclass declares instead of writing:

    * ``state``: the attributes a resumed run needs, each with how it combines across
      processes (:data:`STATE_REDUCTIONS`); :meth:`state_dict`, :meth:`load_state_dict` and
      :func:`probes.distributed.reduce_state` are built from it, with the records not yet
      collected and the histogram sampler's generator.
    * hooks through :meth:`_forward_hook`, :meth:`_forward_pre_hook` and :meth:`_grad_hook`,
      which call the measurement only while :attr:`measuring` and, for forward hooks, in a
      training pass (not evaluation, recomputation counted once: :meth:`_guard_forward`).
    """

    #: short name used in ``Monitor`` menus and summary.json
    name: str = "probe"
    #: attribute -> how it reduces across processes; checkpointed as it is
    state: Dict[str, str] = {}
    #: Whether this probe's per-step hooks (not armed) may be traced into a torch.compile graph:
    #: written to branch on :func:`compiling` and make only tensor updates there. A probe that
    #: is not is left out of compiled passes (the monitor says so once): it measures the
    #: logging steps, which run eagerly.
    traceable: bool = False
    #: Whether :meth:`end_step` or :meth:`_on_start` has work on steps that do not log. Between
    #: logs the monitor calls only the probes that say so (a Python call per probe and step is
    #: what a 1 ms step feels); a subclass whose overrides of them act on logging steps only
    #: says False. (Hooks registered at attach run on every pass either way.)
    works_between_logs: bool = True

    def __init__(self) -> None:
        self._handles: List[Any] = []
        self._step_handles: List[Any] = []  # hooks registered for the current logging step
        self._model: Optional[nn.Module] = None
        self._logging = False
        self.step = 0
        self._records: List[Record] = []
        self._model_passes = 0  # training passes of the whole model in this step
        self._forwarded: Dict[tuple, int] = {}  # (module id, pre-hook?) -> training calls this step
        self._recomputed: Dict[tuple, int] = {}  # the same, made again by activation checkpointing
        self._call_index = 0
        self._scratch: Optional[stats.Scratch] = None
        # hooks that should run on every training pass (not armed): whether they did, since the
        # last logging step, eagerly or in a compiled graph (the monitor's check for blindness)
        self._always_hooked = False
        self._hook_calls = 0
        self._compiled_call = False
        self._compiled_skip = False  # a compiled graph skipped this (not traceable) probe's hooks
        self._held: Optional[Any] = None  # a probes.held.Held: tensors its hooks keep to fold later
        #: whether this logging step comes close after the one before (fewer than
        #: :data:`probes.stats.CLOSE_LOGS` steps): set by the monitor; statistics probes may then
        #: summarise large tensors from samples (:func:`probes.stats.moments_budget`)
        self.close_log = False
        for attr, how in self.state.items():
            if how not in STATE_REDUCTIONS:
                raise ValueError(f"{type(self).__name__}.state[{attr!r}]: {how!r} is not one of {STATE_REDUCTIONS}")

    # -- attach / detach -------------------------------------------------------------
    def attach(self, model: nn.Module) -> "Probe":
        """Register this probe's hooks on ``model``; use as ``with probe.attach(model): ...``.

        A ``torch.compile``'d or DistributedDataParallel model is attached through to the
        module it wraps, so tags are the model's own names either way."""
        expect_module(model)
        if self._model is not None:
            raise ProbeError(
                f"{type(self).__name__} is already attached to a {type(self._model).__name__}; "
                "detach() it before attaching it again"
            )
        model = unwrap(model)
        self._model = model
        self._records = []
        try:
            self._on_attach(model)
        except BaseException:
            self.detach()
            raise
        return self

    def detach(self) -> None:
        """Remove every hook this probe registered; safe to call twice."""
        self._disarm()
        while self._handles:
            self._handles.pop().remove()
        if self._held is not None:
            self._held.close()  # what the hooks held, folded
        if self._model is not None:
            self._on_detach()
        if self._scratch is not None:
            self._scratch.release()
        self._model = None
        self._logging = False
        self._always_hooked = False

    @property
    def attached(self) -> bool:
        return self._model is not None

    def __enter__(self) -> "Probe":
        return self

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _disarm(self) -> None:
        while self._step_handles:
            self._step_handles.pop().remove()

    # -- hooks -------------------------------------------------------------------------
    @property
    def measuring(self) -> bool:
        """Whether a hook firing now should measure: attached, and not silenced by
        :func:`suspended` (the library running the model itself: pair scans, replays)."""
        return self._model is not None and not is_suspended()

    def _forward_hook(self, module: nn.Module, fn: Callable[..., None], armed: bool = False) -> None:
        """Call ``fn(module, inputs, output)`` after each training forward call of ``module``
        (see :meth:`_guard_forward`). ``armed``: only on logging steps (register it in
        :meth:`_on_arm`), and only in the step's first training pass of the model."""
        self._register(module.register_forward_hook(partial(self._guard_forward, fn, False, armed)), armed)
        self._always_hooked |= not armed

    def _forward_pre_hook(self, module: nn.Module, fn: Callable[..., None], armed: bool = False,
                          with_kwargs: bool = False) -> None:
        """Call ``fn(module, args[, kwargs])`` before each training forward call of ``module``."""
        hook = partial(self._guard_forward, fn, True, armed)
        self._register(module.register_forward_pre_hook(hook, with_kwargs=with_kwargs), armed)
        self._always_hooked |= not armed

    def _model_hook(self, model: nn.Module, fn: Callable[[tuple, dict], None]) -> None:
        """Call ``fn(args, kwargs)`` before each training pass of the whole ``model``, on every
        step. Leaner than :meth:`_forward_pre_hook` (it runs once a step, where a microsecond
        counts): the model itself is never recomputed by activation checkpointing, so only
        the training checks. Traced by torch.compile, ``fn`` must branch on :func:`compiling`."""
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if compiling():
                if self._model is not None and not _SUSPENDED and module.training and torch.is_grad_enabled():
                    self._compiled_call = True
                    fn(args, kwargs)
            elif self._model is not None and module.training and torch.is_grad_enabled() and not is_suspended():
                self._hook_calls += 1
                fn(args, kwargs)

        self._handles.append(model.register_forward_pre_hook(hook, with_kwargs=True))
        self._always_hooked = True

    def _grad_hook(self, param: torch.Tensor, fn: Callable[..., None], armed: bool = False) -> None:
        """Call ``fn(param)`` when backward has accumulated ``param.grad``."""
        self._register(param.register_post_accumulate_grad_hook(partial(self._guard_backward, fn)), armed)

    def _register(self, handle: Any, armed: bool) -> None:
        (self._step_handles if armed else self._handles).append(handle)

    def _on_model_call(self, module: nn.Module, args: tuple) -> None:
        if not compiling() and self.measuring and not in_backward() and torch.is_grad_enabled() and module.training:
            self._model_passes += 1

    def _guard_forward(self, fn: Callable[..., None], pre: bool, armed: bool, module: nn.Module, *args: Any) -> None:
        """Run a forward hook's measurement only for a module call of training:

        * not under ``no_grad``/``inference_mode`` and not with the model in ``eval()``:
          evaluation passes are not training, whenever they run;
        * a call that activation checkpointing makes again during backward (recomputation)
          only if the forward pass did not measure it: ``use_reentrant=False`` runs the
          forward with gradients (measured then, recomputation skipped), ``use_reentrant=True``
          runs it under ``no_grad`` (skipped then, measured in the recomputation);
        * for armed (logging-step) hooks, only in the step's first training pass of the model,
          so that gradient accumulation's later micro-batches do not add ``#k`` series.

        The call's index among this step's calls of the module (a module called twice per
        forward) is left in ``self._call_index`` for :meth:`_call_name`.
        """
        if compiling():
            # Traced into a compiled graph, which runs it on every call: no per-step Python
            # bookkeeping here (its counters would be guards); the measurement itself branches
            # on compiling() and makes plain tensor updates. Armed hooks measure on logging
            # steps, which the monitor runs eagerly; traced, they do nothing.
            if not armed and self._model is not None and not _SUSPENDED and torch.is_grad_enabled() \
                    and self._model.training:
                if not self.traceable:
                    self._compiled_skip = True  # a constant stored: Dynamo replays it after each run of the graph
                    return
                self._compiled_call = True
                self._call_index = 0
                fn(module, *args)
            return
        # (on every training pass of a per-step hook: as few Python operations as can be)
        if self._model is None or (_SUSPENDED and is_suspended()):  # not self.measuring
            return
        key = (id(module), pre)
        if _GRAPH_TASK_ID is not None and _GRAPH_TASK_ID() != -1:  # in_backward()
            done = self._recomputed.get(key, 0) + 1
            self._recomputed[key] = done
            if done <= self._forwarded.get(key, 0):
                return
            index = done - 1
        elif torch.is_grad_enabled() and self._model.training:
            index = self._forwarded.get(key, 0)
            self._forwarded[key] = index + 1
        else:
            return
        if armed and self._model_passes > 1:
            return
        self._hook_calls += 1
        self._call_index = index
        fn(module, *args)

    def _guard_backward(self, fn: Callable[..., None], *args: Any) -> None:
        if not compiling() and self.measuring:
            fn(*args)

    def _call_name(self, name: str) -> str:
        """``name``, or ``name#k`` for the (k+1)-th call of the same module in this step's pass."""
        return tags.call_name(name, self._call_index)

    # -- records -------------------------------------------------------------------------
    @property
    def scratch(self) -> stats.Scratch:
        """Reusable buffers and the histogram sampler, released when a step that does not log starts."""
        if self._scratch is None:
            # records of host numbers where one process has them (several processes reduce
            # records tensor by tensor: see probes.distributed)
            dist = torch.distributed
            alone = not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)
            self._scratch = stats.Scratch(host_records=alone)
        return self._scratch

    def _scalar(self, kind: str, name: str, value: torch.Tensor, reduce: str = "mean",
                step: Optional[int] = None) -> None:
        self._records.append(Scalar(tags.tag(kind, name), self.step if step is None else step, value, reduce))

    def _histogram(self, kind: str, name: str, hist: stats.Hist, reduce: str = "histogram") -> None:
        self._records.append(Histogram(tags.tag(kind, name), self.step, hist, reduce))

    # -- for subclasses --------------------------------------------------------------
    def _on_attach(self, model: nn.Module) -> None:
        """Register hooks and set per-attach state; called once per attach."""

    def _on_detach(self) -> None:
        """Release per-attach state beyond hooks (hooks are removed already)."""

    def _settle(self) -> None:
        """Fold what the hooks hold to fold later (:class:`probes.held.Held`) into the state:
        called before the state is read or replaced (here, and by a subclass's readers)."""
        if self._held is not None:
            self._held.fold()

    def _on_arm(self, model: nn.Module) -> None:
        """Register hooks needed only on logging steps (``armed=True``). Called when a logging
        step starts; between logs such hooks are not there at all, so the model runs as if
        unprobed (not even a Python call per layer)."""

    def _on_start(self, step: int, logging: bool) -> None:
        """A step is about to run its forward pass."""

    def see_loss(self, loss: torch.Tensor) -> None:
        """The current step's loss, as soon as the loop hands it to the monitor
        (``log_loss``, ``step(loss)``): a reference, not yet read. A monitor calls it only on
        probes that override it."""

    def _late_records(self, step: int) -> List[Record]:
        """Records built at collect time (from state kept on the device), besides :meth:`_scalar`'s."""
        return []

    # -- moments ---------------------------------------------------------------------
    def start_step(self, step: int, logging: bool) -> None:
        """Called before a step's forward pass; ``logging`` says whether it will be logged."""
        self.step = step
        self._model_passes = 0
        if self._forwarded or self._recomputed:
            self._forwarded.clear()
            self._recomputed.clear()
        if not logging and not self._logging and not self._step_handles:  # between logs: nothing to undo
            self._on_start(step, False)
            return
        self._logging = logging
        if not logging:
            self._disarm()
            if self._scratch is not None:
                self._scratch.release()
        elif self._model is not None and not self._step_handles:
            self._on_arm(self._model)
            if self._step_handles:  # armed hooks measure the step's first training pass only
                self._step_handles.append(self._model.register_forward_pre_hook(self._on_model_call))
        self._on_start(step, logging)

    def end_step(self, step: int) -> None:
        """Called after the optimizer has updated the weights at ``step``."""

    def collect(self, step: int) -> List[Record]:
        """Return the records measured since the last logging step (device tensors)."""
        records = self._records + self._late_records(step)
        self._records = []
        if self._scratch is not None:
            self._scratch.new_step()
        return records

    def summary(self) -> Dict[str, Any]:
        """End-of-run facts in plain Python types (for summary.json and the diagnosis)."""
        return {}

    # -- checkpoints -----------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """What a resumed run needs to go on measuring exactly as if never stopped: the
        declared :attr:`state`, records not yet collected and the sampler's generator, as
        tensors and plain Python values (``torch.load(weights_only=True)`` reads it back)."""
        self._settle()
        out = {attr: _copy(getattr(self, attr)) for attr in self.state}
        out["_records"] = [_record_state(r) for r in self._records]
        out["_sampler"] = self._scratch.generator_states() if self._scratch is not None else {}
        return out

    @torch.no_grad()
    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; call it after :meth:`attach` (attach resets state)."""
        missing = set(self.state) - set(state)
        if missing:
            raise ValueError(f"{type(self).__name__}: the saved state lacks {sorted(missing)}")
        self._settle()  # what the hooks hold belongs to the state being replaced
        for attr in self.state:
            setattr(self, attr, _restore(getattr(self, attr), state[attr], f"{type(self).__name__}.{attr}"))
        self._records = [_record_from_state(r) for r in state.get("_records", [])]
        if state.get("_sampler"):
            self.scratch.set_generator_states(state["_sampler"])


def _copy(value: Any) -> Any:
    """A snapshot of a state value that later in-place updates do not change."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copy(v) for v in value)
    return value


def _restore(current: Any, saved: Any, what: str) -> Any:
    """``saved``, written into ``current``'s tensors where it has them (they may be shared, or
    live on the right device), else a copy of it; a checkpoint of another model is an error."""
    if isinstance(current, torch.Tensor) and isinstance(saved, torch.Tensor):
        if current.shape != saved.shape:
            raise ValueError(f"{what}: the saved state has shape {tuple(saved.shape)}, this model "
                             f"{tuple(current.shape)}")
        current.copy_(saved)
        return current
    if isinstance(current, dict) and isinstance(saved, dict) and current:
        if set(current) != set(saved):
            raise ValueError(f"{what}: the saved state is for {sorted(saved)}, not {sorted(current)}")
        return {k: _restore(current[k], saved[k], what) for k in current}
    if isinstance(current, (list, tuple)) and isinstance(saved, (list, tuple)) and current and \
            all(isinstance(c, torch.Tensor) for c in current):
        if len(current) != len(saved):
            raise ValueError(f"{what}: the saved state has {len(saved)} tensors, this model {len(current)}")
        return type(current)(_restore(c, s, what) for c, s in zip(current, saved))
    return _copy(saved)


def _record_state(r: Record) -> tuple:
    if isinstance(r, Scalar):
        return ("scalar", r.tag, r.step, stats.materialize(r.value), r.reduce)
    return ("histogram", r.tag, r.step, tuple(stats.materialize(t) for t in r.hist), r.reduce)


def _record_from_state(t: tuple) -> Record:
    kind, tag, step, value, reduce = t
    if kind == "scalar":
        return Scalar(tag, step, value, reduce)
    return Histogram(tag, step, stats.Hist(*value), reduce)


_GRAPH_TASK_ID = getattr(torch._C, "_current_graph_task_id", None)


def in_backward() -> bool:
    """Whether autograd's engine is running a backward pass now (where a forward call can only
    be activation checkpointing's recomputation)."""
    return _GRAPH_TASK_ID is not None and _GRAPH_TASK_ID() != -1


def expect_module(model: Any) -> None:
    """A clear error, before anything is registered or opened, when ``model`` is not a module."""
    if not isinstance(model, nn.Module):
        what = f"{type(model).__name__} {model!r}" if isinstance(model, str) else type(model).__name__
        raise TypeError(f"probes attach to a torch.nn.Module (the model itself), not a {what}"
                        + ("; pass the module that owns these parameters" if isinstance(model, (list, tuple))
                           else ""))


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside ``torch.compile``'s and DistributedDataParallel's wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            model = inner
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def leaf_modules(model: nn.Module) -> Iterator[tuple]:
    """(name, module) of modules with no children: the layers whose outputs we measure."""
    for name, module in model.named_modules():
        if not any(True for _ in module.children()):
            yield (name or type(module).__name__), module


def weight_matrices(model: nn.Module) -> Iterator[tuple]:
    """(name, parameter) of trainable weights with ``dim >= 2``: Linear/Conv kernels, embeddings.

    Biases and norm scales are left out: "how much did a layer's weights move" is about these.
    """
    for name, param in model.named_parameters():
        if param.requires_grad and param.dim() >= 2:
            yield name, param


def first_weight_layer(model: nn.Module, name: Optional[str] = None) -> tuple:
    """(name, module) of the layer that first sees the input: ``name`` if given, else the first
    module, in registration order, that owns a weight with ``dim >= 2``.

    Registration order is execution order for ``nn.Sequential`` and for models that define
    their layers in the order they use them; pass ``name`` for any other model. ``name=""``
    is the model itself (its input).
    """
    modules = dict(model.named_modules())
    if name is not None:
        if name not in modules:
            raise ProbeError(f"the model has no submodule named {name!r}")
        return name, modules[name]
    for mod_name, module in modules.items():
        if any(p.dim() >= 2 for p in module.parameters(recurse=False)):
            return mod_name, module
    raise ProbeError(f"{type(model).__name__} has no layer with a weight matrix; pass the layer's name")


def first_tensor(output: Any) -> Optional[torch.Tensor]:
    """The tensor a layer produced, looking inside tuples, lists and dicts (first one found)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (list, tuple)):
        for item in output:
            found = first_tensor(item)
            if found is not None:
                return found
    return None
