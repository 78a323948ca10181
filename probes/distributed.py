"""Probe statistics of several processes (DistributedDataParallel) reduced to one set.

Under DDP each rank runs the model on its own slice of every batch, so a probe on one rank
measures that slice only. :func:`reduce_records` is called by
:class:`probes.monitor.Monitor` on every logging step, on every rank, before the one host
transfer. It turns each rank's records into the statistic of the whole global batch, as a
single process training on that batch would have logged it, by each record's own ``reduce``
(see :data:`probes.records.REDUCTIONS`): the probe that made a record says how it combines,
so nothing here knows a tag or a probe class. Histograms are merged as: min of mins, max of
maxes, sums of counts, sums and squares; buckets re-binned onto the global range (each count
moves to the global bucket holding its bucket's centre: at most one bucket's width off).

End-of-run state that probes keep per rank (dead units, dead inputs) is combined by
:func:`reduce_state`, from each probe's declared ``state`` reductions.

Parameter gradients: DDP all-reduces (averages) them *after* the backward pass has
accumulated each rank's local gradient, so a ``register_post_accumulate_grad_hook`` sees the
local gradient. :func:`gradients_averaged_later` tells probes that this is so; they then
measure ``param.grad`` after ``optimizer.step()`` (at ``end_step``), when it holds the
averaged gradient, i.e. the full batch's gradient, identical on every rank.

Everything here is a no-op unless ``torch.distributed`` is initialised with more than one
process, so probes stay usable (and unchanged) without it.
"""
from __future__ import annotations

import zlib
from typing import Any, Dict, List

import torch

from .records import Histogram, Record, Scalar
from .stats import Hist


def world_size() -> int:
    """Number of processes in the default group; 1 when torch.distributed is not in use."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def gradients_averaged_later() -> bool:
    """True when ``param.grad`` seen in a post-accumulate hook is this rank's local gradient,
    to be averaged over ranks when backward ends (DDP): measure it after the step instead."""
    return world_size() > 1


def _check_same_records(records: List[Record], device: torch.device) -> None:
    """Every rank must reduce the same tags in the same order, or the sums are garbage."""
    dist = torch.distributed
    text = "\n".join(f"{r.tag}@{r.step}:{r.reduce}" for r in records)
    mine = torch.tensor([len(records), zlib.crc32(text.encode())], dtype=torch.int64, device=device)
    low, high = mine.clone(), mine.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if not torch.equal(low, high):
        raise RuntimeError("probe records differ between ranks (different layers or steps were measured); "
                           "cannot reduce them across processes")


def _rebin(h: Hist, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """This rank's bucket counts moved onto ``bins`` equal buckets spanning [lo, hi]."""
    bins = h.bucket_counts.numel()
    width = h.bucket_limits - torch.cat([h.min.reshape(1), h.bucket_limits[:-1]])
    centres = h.bucket_limits - width / 2
    global_width = torch.clamp(hi - lo, min=1e-12) / bins
    index = ((centres - lo) / global_width).floor().clamp_(0, bins - 1).long()
    return torch.zeros_like(h.bucket_counts).scatter_add_(0, index, h.bucket_counts)


def reduce_records(records: List[Record]) -> List[Record]:
    """Records of the whole global batch from every rank's records (see the module's table).

    Collective: every rank must call it at the same logging step with the same tags. Costs
    a fixed handful of all-reduces per call, whatever the number of records.
    """
    n = world_size()
    if n == 1 or not records:
        return records
    dist = torch.distributed
    device = _device_of(records[0])
    _check_same_records(records, device)
    out: List[Record] = list(records)
    scalars = [(i, r) for i, r in enumerate(records) if isinstance(r, Scalar) and r.reduce != "same"]
    for op, picked in _by_op(scalars).items():
        values = torch.stack([r.value.detach().float().reshape(()).to(device) for _, r in picked])
        if op == "l2":
            values = values * values
        dist.all_reduce(values, op=_OPS[op])
        if op == "mean":
            values = values / n
        elif op == "l2":
            values = values.sqrt()
        for k, (i, r) in enumerate(picked):
            out[i] = Scalar(r.tag, r.step, values[k], r.reduce)

    hists = [(i, r) for i, r in enumerate(records) if isinstance(r, Histogram) and r.reduce == "histogram"]
    if hists:
        lo = torch.stack([r.hist.min.float().to(device) for _, r in hists])
        hi = torch.stack([r.hist.max.float().to(device) for _, r in hists])
        empty = torch.stack([r.hist.num.float().to(device) for _, r in hists]) == 0
        # An empty histogram's zeros must not stretch the range: +inf/-inf lose min/max.
        lo_all = torch.where(empty, torch.full_like(lo, float("inf")), lo)
        hi_all = torch.where(empty, torch.full_like(hi, float("-inf")), hi)
        dist.all_reduce(lo_all, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi_all, op=dist.ReduceOp.MAX)
        nothing = torch.isinf(lo_all)
        lo_all, hi_all = torch.where(nothing, 0.0, lo_all), torch.where(nothing, 0.0, hi_all)
        counts = torch.stack([_rebin(r.hist, lo_all[k], hi_all[k]) for k, (_, r) in enumerate(hists)])
        moments = torch.stack([torch.stack([r.hist.num.float(), r.hist.sum.float(), r.hist.sum_squares.float()])
                               .to(device) for _, r in hists])
        dist.all_reduce(counts)
        dist.all_reduce(moments)
        for k, (i, r) in enumerate(hists):
            bins = counts.shape[1]
            width = torch.clamp(hi_all[k] - lo_all[k], min=1e-12) / bins
            limits = lo_all[k] + width * torch.arange(1, bins + 1, device=device)
            merged = Hist(lo_all[k], hi_all[k], moments[k, 0], moments[k, 1], moments[k, 2], limits, counts[k])
            out[i] = Histogram(r.tag, r.step, merged, r.reduce)
    return out


def _by_op(items: List[tuple]) -> Dict[str, List[tuple]]:
    groups: Dict[str, List[tuple]] = {}
    for i, r in items:
        groups.setdefault(r.reduce, []).append((i, r))
    return groups


def _device_of(record: Record) -> torch.device:
    return record.value.device if isinstance(record, Scalar) else record.hist.num.device


def reduce_state(probes: List[Any]) -> None:
    """End-of-run state that a probe keeps per rank, combined over ranks in place (collective),
    by each probe's declared ``state`` reductions (:data:`probes.base.STATE_REDUCTIONS`): e.g.
    :class:`probes.DeadUnits` ORs its seen-firing masks (a unit is dead only if it never fired
    on any rank) and sums its example counts. ``"same"`` state (weights, averaged gradients)
    is left alone: DDP keeps it identical on every rank.
    """
    if world_size() == 1:
        return
    for probe in probes:
        for attr, how in type(probe).state.items():
            if how != "same":
                setattr(probe, attr, _reduce_value(getattr(probe, attr), how))


def _reduce_value(value: Any, how: str) -> Any:
    """``value`` combined over ranks; dicts key by key in sorted order (every rank has the same keys)."""
    dist = torch.distributed
    if value is None:
        return None
    if isinstance(value, dict):
        return {k: _reduce_value(value[k], how) for k in sorted(value)}
    if isinstance(value, torch.Tensor):
        t = value.to(torch.uint8) if value.dtype == torch.bool else value.clone()
        dist.all_reduce(t, op=_OPS[how])
        return t.bool() if value.dtype == torch.bool else t
    t = torch.tensor([value], dtype=torch.float64 if isinstance(value, float) else torch.int64, device=_device())
    dist.all_reduce(t, op=_OPS[how])
    return type(value)(t.item())


def _device() -> torch.device:
    """Where collectives run: the current CUDA device under NCCL, else the CPU."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


_OPS = {"mean": torch.distributed.ReduceOp.SUM, "sum": torch.distributed.ReduceOp.SUM,
        "l2": torch.distributed.ReduceOp.SUM, "max": torch.distributed.ReduceOp.MAX,
        "any": torch.distributed.ReduceOp.MAX, "min": torch.distributed.ReduceOp.MIN} \
    if torch.distributed.is_available() else {}
