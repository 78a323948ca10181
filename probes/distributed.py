"""Probe statistics of several processes (DistributedDataParallel) reduced to one set.

Under DDP each rank runs the model on its own slice of every batch, so a probe on one rank
measures that slice only. :func:`reduce_records` is called by
:class:`probes.monitor.Monitor` on every logging step, on every rank, before the one host
transfer. It turns each rank's records into the statistic of the whole global batch, as a
single process training on that batch would have logged it:

===================================  ==========================================================
record                               reduction over ranks
===================================  ==========================================================
``train/loss``                       mean (each rank logs its share of the batch's mean loss)
``*_fraction/*`` (exact zeros,       mean: the fraction over all ranks' elements (exact when
saturation)                          every rank holds as many examples; train.py's slices do)
``activations/*`` histograms         min of mins, max of maxes, sums of counts, sums and squares;
                                     buckets re-binned onto the global range (each count moves to
                                     the global bucket holding its bucket's centre: at most one
                                     bucket's width off)
``output_grad/*``, ``output_grad_    the gradient of the all-ranks objective (DDP optimises the
norm/*``                             mean of the ranks' losses) with respect to each rank's layer
                                     outputs is the rank's own gradient / N: histograms are merged
                                     as above after that scaling, norms are sqrt(sum of squares)/N
``grad*/*`` (parameters), ``update_  no change: these are measured from the averaged gradient and
*``, ``weight_change/*``             the shared weights, identical on every rank (see below)
anything else                        mean
===================================  ==========================================================

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
from typing import Callable, List, Optional

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


_SAME = ("grad/", "grad_zero_fraction/", "grad_norm/", "update_", "weight_change/")
_OUTPUT_GRAD = ("output_grad/", "output_grad_norm/")


def _rule(tag: str) -> str:
    # Tags may carry a prefix (e.g. "variant1/"); match the part a probe wrote.
    for part in (tag, tag.split("/", 1)[-1]):
        if part.startswith(_SAME):
            return "same"
        if part.startswith("output_grad_norm/"):
            return "norm"
        if part.startswith("output_grad/"):
            return "hist_scaled"
    return "mean"


def _check_same_records(records: List[Record], device: torch.device) -> None:
    """Every rank must reduce the same tags in the same order, or the sums are garbage."""
    dist = torch.distributed
    text = "\n".join(f"{r.tag}@{r.step}" for r in records)
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
    rules = [_rule(r.tag) for r in records]

    scalars = [(i, r) for i, r in enumerate(records) if isinstance(r, Scalar) and rules[i] in ("mean", "norm")]
    out: List[Optional[Record]] = list(records)
    if scalars:
        values = torch.stack([r.value.detach().float().reshape(()).to(device) for _, r in scalars])
        is_norm = torch.tensor([rules[i] == "norm" for i, _ in scalars], device=device)
        values = torch.where(is_norm, values * values, values)
        dist.all_reduce(values)
        values = torch.where(is_norm, values.sqrt() / n, values / n)
        for k, (i, r) in enumerate(scalars):
            out[i] = Scalar(r.tag, r.step, values[k])

    hists = [(i, r) for i, r in enumerate(records) if isinstance(r, Histogram) and rules[i] != "same"]
    if hists:
        scaled = [_scaled(r.hist, 1.0 / n) if rules[i] == "hist_scaled" else r.hist for i, r in hists]
        lo = torch.stack([h.min.float().to(device) for h in scaled])
        hi = torch.stack([h.max.float().to(device) for h in scaled])
        empty = torch.stack([h.num.float().to(device) for h in scaled]) == 0
        # An empty histogram's zeros must not stretch the range: +inf/-inf lose min/max.
        lo_all = torch.where(empty, torch.full_like(lo, float("inf")), lo)
        hi_all = torch.where(empty, torch.full_like(hi, float("-inf")), hi)
        dist.all_reduce(lo_all, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi_all, op=dist.ReduceOp.MAX)
        nothing = torch.isinf(lo_all)
        lo_all, hi_all = torch.where(nothing, 0.0, lo_all), torch.where(nothing, 0.0, hi_all)
        counts = torch.stack([_rebin(h, lo_all[k], hi_all[k]) for k, h in enumerate(scaled)])
        moments = torch.stack([torch.stack([h.num.float(), h.sum.float(), h.sum_squares.float()]).to(device)
                               for h in scaled])
        dist.all_reduce(counts)
        dist.all_reduce(moments)
        for k, (i, r) in enumerate(hists):
            bins = counts.shape[1]
            width = torch.clamp(hi_all[k] - lo_all[k], min=1e-12) / bins
            limits = lo_all[k] + width * torch.arange(1, bins + 1, device=device)
            merged = Hist(lo_all[k], hi_all[k], moments[k, 0], moments[k, 1], moments[k, 2], limits, counts[k])
            out[i] = Histogram(r.tag, r.step, merged)
    return out  # type: ignore[return-value]


def _scaled(h: Hist, s: float) -> Hist:
    """The histogram of ``s * x`` for ``s > 0``."""
    return Hist(h.min * s, h.max * s, h.num, h.sum * s, h.sum_squares * (s * s), h.bucket_limits * s, h.bucket_counts)


def _device_of(record: Record) -> torch.device:
    return record.value.device if isinstance(record, Scalar) else record.hist.num.device


def reduce_state(probes: List[object], reducers: Optional[dict] = None) -> None:
    """End-of-run state that a probe keeps per rank, combined over ranks in place (collective).

    Today: :class:`probes.DeadInputs` (a feature is "always zero" only if it was zero on every
    rank: OR of the seen-nonzero masks; examples and skipped are summed) and
    :class:`probes.DeadUnits` (a unit is dead only if it never fired on any rank: the same
    OR per layer, examples summed). Probes of parameters and weights need nothing: DDP keeps
    those identical on every rank.
    """
    if world_size() == 1:
        return
    from .dead_input import DeadInputs
    from .dead_units import DeadUnits

    table: dict = {DeadInputs: _reduce_dead_inputs, DeadUnits: _reduce_dead_units, **(reducers or {})}
    for probe in probes:
        fn: Optional[Callable] = table.get(type(probe))
        if fn is not None:
            fn(probe)


def _reduce_dead_inputs(probe) -> None:
    dist = torch.distributed
    if probe.seen_nonzero is None:
        return
    mask = probe.seen_nonzero.to(torch.uint8)
    dist.all_reduce(mask, op=dist.ReduceOp.MAX)
    probe.seen_nonzero = mask.bool()
    counts = torch.tensor([probe.examples, probe.skipped], dtype=torch.int64, device=mask.device)
    dist.all_reduce(counts)
    probe.examples, probe.skipped = (int(c) for c in counts.tolist())


def _reduce_dead_units(probe) -> None:
    """Every rank ran the same model, so the same ReLU layers (taken in sorted order)."""
    dist = torch.distributed
    for name in sorted(probe.seen_nonzero):
        mask = probe.seen_nonzero[name].to(torch.uint8)
        dist.all_reduce(mask, op=dist.ReduceOp.MAX)
        probe.seen_nonzero[name] = mask.bool()
        count = torch.tensor([probe.examples.get(name, 0)], dtype=torch.int64, device=mask.device)
        dist.all_reduce(count)
        probe.examples[name] = int(count)
