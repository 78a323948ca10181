"""Hold now, fold later: small CPU tensors that a per-pass hook keeps by reference, folded
into the probe's state together.

On a CPU, inside a training step, a small tensor op costs far more than its arithmetic and
far more than in a loop of its own: on the benchmark's 784-128-10 MLP (batch 32, one thread,
~1 ms a step) ``DeadInputs``' three ops on the 32x784 input took 54 us a pass (28, 18 and
8 us), and even ``torch.empty(0)`` took 10 us there against 0.7 us in a loop (presumably the
step's own kernels leave the dispatcher's code and data out of the caches; every Python
operation of a hook is slower there too, ~1 us for an attribute read). So
:class:`probes.DeadInputs` and :class:`probes.DeadUnits` keep a reference to the tensor and
its ``_version`` (a few attribute reads) and fold the held tensors every :attr:`Held.count`
passes or :attr:`Held.max_bytes` bytes, where each op covers all of them, and always before
the probe's state is read or replaced: its properties (:func:`settled`), ``summary()``,
``state_dict()``, ``load_state_dict()``, ``detach()``, the close of a logging interval (see
:meth:`probes.base.Probe._settle`), and so :func:`probes.distributed.reduce_state` too,
which reads those properties. The memory this keeps alive: the held tensors (at most
:attr:`Held.max_bytes`, 4 MiB) and the buffer :meth:`Held.join` reuses (as large).

A held tensor is the user's tensor, not a copy. If it is written in place before the fold
(its ``_version`` moved: a loop that copies each batch into one buffer, a model that
normalises its input in place), what the pass saw is gone: the fold leaves it out and tells
the probe how many examples that was, which the probe reports (``DeadInputs.skipped``,
``DeadUnits.unchecked``), and from then on the probe folds every pass at once, as it would
without holding. A buffer reused pass after pass is noticed at the next pass, so it costs
one batch. A write that autograd's version counter does not see (through ``.data``, or a
NumPy array sharing the memory) cannot be noticed. Not held, so folded at once: tensors on
an accelerator (there the fold's decisions would be syncs), larger than :attr:`Held.SMALL`
bytes (there the arithmetic dwarfs the dispatch), inference tensors (no version counter),
tensor subclasses and non-strided layouts; passes traced by ``torch.compile`` never reach it.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch


class Held:
    """Small CPU tensors kept per key (e.g. a layer) until :meth:`fold`.

    ``fold_key(key, tensors, changed)`` is called by :meth:`fold` for each key with the held
    tensors still as they were when held (in the order held) and the sum of the ``examples``
    given for those written in place since (left out).
    """

    #: the most bytes of a tensor's storage that is held (2**16 float32 elements: a 32x784 batch)
    SMALL = 2 ** 18

    def __init__(self, fold_key: Callable[[Any, List[torch.Tensor], int], None], count: int = 64,
                 max_bytes: int = 2 ** 22) -> None:
        self._fold_key = fold_key
        self.count = count  # fold when this many tensors are held...
        self.max_bytes = max_bytes  # ...or this many bytes
        self._held: Dict[Any, List[Tuple[torch.Tensor, int, int]]] = {}
        self._tensors = 0
        self._bytes = 0
        self._scratch: Optional[torch.Tensor] = None  # join's buffer, kept from fold to fold
        #: a held tensor was written in place before its fold: hold nothing any more
        self.immediate = False

    def keep(self, key: Any, tensor: torch.Tensor, examples: int) -> bool:
        """Hold ``tensor`` (``examples`` of them) to fold later; False: not held, fold it now.
        Eager passes only: the caller has checked :func:`probes.base.compiling`. A few
        attribute reads: this runs on every pass."""
        if self.immediate or type(tensor) is not torch.Tensor or not tensor.is_cpu or \
                tensor.layout is not torch.strided:
            return False  # (is_cpu: probes.stats.host_reads_are_free, without building a device)
        size = tensor.untyped_storage().nbytes()  # what holding it keeps alive (a view: its whole base)
        if size > self.SMALL or tensor.is_inference():
            return False
        held = self._held.get(key)
        if held is None:
            held = self._held[key] = []
        elif held[-1][0]._version != held[-1][1]:
            # the previous pass's tensor is written in place already (a reused batch buffer):
            # stop holding now rather than lose a whole fold's worth of passes
            self.immediate = True
            self.fold()
            return False
        held.append((tensor, tensor._version, examples))
        self._tensors += 1
        self._bytes += size
        if self._tensors >= self.count or self._bytes >= self.max_bytes:
            self.fold()
        return True

    def fold(self) -> None:
        """Hand every held tensor to the probe (see the class); nothing is held after."""
        if not self._held:
            return
        held, self._held, self._tensors, self._bytes = self._held, {}, 0, 0
        for key, items in held.items():
            intact, changed = [], 0
            for tensor, version, examples in items:
                if tensor._version == version:
                    intact.append(tensor)
                else:
                    changed += examples
            if changed:
                self.immediate = True
            self._fold_key(key, intact, changed)

    def join(self, tensors: List[torch.Tensor]) -> Optional[torch.Tensor]:
        """``tensors`` (held ones, in a fold) as one contiguous tensor along dimension 0, or None
        where there is one, or their other dimensions or dtypes differ. The tensor is a buffer
        kept for the next folds (a fresh one of a few MB faults its pages in on every fold under
        glibc's default malloc): the caller may write into it, and must not keep it."""
        if len(tensors) == 1:
            return None
        first = tensors[0]
        dtype, rest, rows = first.dtype, first.shape[1:], 0
        for t in tensors:  # (one loop: in a fold every Python operation per held tensor shows)
            shape = t.shape
            if t.dtype is not dtype or shape[1:] != rest:
                return None
            rows += shape[0]
        shape = (rows, *rest)
        size = math.prod(shape) * first.element_size()
        if self._scratch is None or self._scratch.numel() < size:
            self._scratch = torch.empty(size, dtype=torch.uint8)
        return torch.cat(tensors, out=self._scratch[:size].view(first.dtype).view(shape))

    def close(self) -> None:
        """Fold, and let the buffer go (the probe is detached)."""
        self.fold()
        self._scratch = None

    def __len__(self) -> int:
        """How many tensors are held now."""
        return self._tensors


def nonzero_somewhere(t: torch.Tensor) -> bool:
    """Whether some element of ``t`` is not 0 (a NaN is not 0): one ``aminmax``, which on a CPU
    took a third of ``any``'s time on a float 1024x232 (84 vs 285 us), and two reads."""
    if not t.numel():
        return False
    if t.is_complex():
        return bool(t.any())
    low, high = torch.aminmax(t)
    return low.item() != 0 or high.item() != 0


def settled(attr: str, doc: str) -> property:
    """A probe's state attribute kept in ``attr`` that a fold changes: what the hooks hold is
    folded first (:meth:`probes.base.Probe._settle`) whenever it is read or set (by the probe's
    user, ``state_dict``, ``load_state_dict``, :func:`probes.distributed.reduce_state`). Hooks
    use ``attr`` itself."""
    def read(probe: Any) -> Any:
        probe._settle()
        return getattr(probe, attr)

    def write(probe: Any, value: Any) -> None:
        probe._settle()
        setattr(probe, attr, value)

    return property(read, write, doc=doc)
