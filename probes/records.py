"""What a probe hands over: records that still live on the device.

A probe measures; a sink shows (cockpit's quantities vs instruments). In between, records
carry device tensors so that :class:`probes.monitor.Monitor` can move everything a logging
step produced to the host in a single transfer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Tuple, Union

import torch

from .stats import Hist, Pending

#: How a record measured by each of several processes (DistributedDataParallel) becomes the
#: record of the whole global batch; :mod:`probes.distributed` applies it, knowing no tag:
#:
#: ``"mean"``: the average over ranks (fractions, losses: each rank holds as many examples);
#: ``"sum"``, ``"max"``, ``"min"``: the sum, largest or smallest over ranks;
#: ``"l2"``: sqrt of the sum of squares (the norm of a tensor split across ranks);
#: ``"same"``: identical on every rank (measured from the averaged gradient or the shared
#: weights), left as it is;
#: ``"histogram"``: histograms merged onto the global range (histograms only).
REDUCTIONS = ("mean", "sum", "max", "min", "l2", "same", "histogram")


@dataclass
class Scalar:
    tag: str
    step: int
    value: torch.Tensor  # 0-d
    reduce: str = "mean"

    def __post_init__(self) -> None:
        if self.reduce not in REDUCTIONS or self.reduce == "histogram":
            raise ValueError(f"a scalar reduces by one of {REDUCTIONS[:-1]}, not {self.reduce!r}")


@dataclass
class Histogram:
    tag: str
    step: int
    hist: Hist
    reduce: str = "histogram"  # or "same"

    def __post_init__(self) -> None:
        if self.reduce not in ("histogram", "same"):
            raise ValueError(f"a histogram reduces by 'histogram' or 'same', not {self.reduce!r}")


Record = Union[Scalar, Histogram]


@dataclass
class HostScalar:
    tag: str
    step: int
    value: float


@dataclass
class HostHistogram:
    tag: str
    step: int
    min: float
    max: float
    num: float
    sum: float
    sum_squares: float
    bucket_limits: List[float]
    bucket_counts: List[float]


def to_host(records: List[Record]) -> list:
    """Move every tensor of ``records`` to the host with one copy (one sync per logging step).

    A record's numbers may also be Python numbers already (a CPU summary finished on the host:
    :func:`probes.stats.summarize`) or :class:`probes.stats.Pending` ones (small tensors
    summarised together at collect time); those are read from their batch's tables."""
    if not records:
        return []
    # A handful of ops whatever the number of records: every 0-d value (scalars and the five
    # numbers of each histogram) in one stack, every histogram's bucket limits and counts in
    # one cat, each batch of deferred summaries whole, then one copy. A view per tensor (the
    # way before) was ~400 ops a logging step of a small MLP (~130 records), each a few
    # microseconds: more than its training step.
    numbers: List[Any] = []  # 0-d tensors, Pending numbers and Python numbers, in record order
    vectors: List[Any] = []  # 1-d tensors, Pending rows and lists
    for r in records:
        if isinstance(r, Scalar):
            numbers.append(_number(r.value))
        else:
            numbers.extend(_number(t) for t in r.hist[:5])
            vectors.append(r.hist.bucket_limits)
            vectors.append(r.hist.bucket_counts)
    number_values, vector_values = _one_copy(numbers, vectors)
    out, i, j = [], 0, 0
    for r in records:
        if isinstance(r, Scalar):
            out.append(HostScalar(r.tag, r.step, number_values[i]))
            i += 1
        else:
            out.append(HostHistogram(r.tag, r.step, *number_values[i:i + 5], vector_values[j], vector_values[j + 1]))
            i += 5
            j += 2
    return out


def _number(value: Any) -> Any:
    """A record's number as :func:`_one_copy` takes it: a 0-d tensor, a Pending or a float."""
    if isinstance(value, torch.Tensor):
        return value if value.dim() == 0 else value.reshape(())
    return value if isinstance(value, Pending) else float(value)


def _one_copy(numbers: List[Any], vectors: List[Any]) -> Tuple[List[float], List[List[float]]]:
    """Every number and vector as Python floats, with one device-to-host copy: plain tensors
    stacked and cat, then each batch of pending summaries as it is (its numbers, limits and
    counts tables); Python numbers and lists as they are."""
    plain_numbers = [t for t in numbers if isinstance(t, torch.Tensor)]
    plain_vectors = [t for t in vectors if isinstance(t, torch.Tensor)]
    batches: Dict[int, Any] = {}
    for t in (*numbers, *vectors):
        if isinstance(t, Pending) and id(t.batch) not in batches:
            t.batch.resolve()
            batches[id(t.batch)] = t.batch
    parts: List[torch.Tensor] = []
    starts: Dict[int, Tuple[int, int, int]] = {}  # batch -> where its numbers, limits, counts start
    flat: List[float] = []
    with torch.no_grad():
        if plain_numbers:
            parts.append(torch.stack(plain_numbers).to(torch.float64))
        if plain_vectors:
            parts.append(torch.cat(plain_vectors).to(torch.float64))
        at = len(plain_numbers) + sum(t.numel() for t in plain_vectors)
        for key, batch in batches.items():
            tables = (batch.numbers, batch.limits, batch.counts)
            starts[key] = (at, at + tables[0].numel(), at + tables[0].numel() + tables[1].numel())
            at += sum(t.numel() for t in tables)
            parts.extend(t.reshape(-1).to(torch.float64) for t in tables)
        if parts:
            device = parts[0].device
            if any(p.device != device for p in parts):
                parts = [p.to(device) for p in parts]
            flat = (torch.cat(parts) if len(parts) > 1 else parts[0]).to("cpu").tolist()
    number_values, k = [], 0
    for t in numbers:
        if isinstance(t, Pending):
            number_values.append(flat[starts[id(t.batch)][0] + t.row * t.batch.COLUMNS + t.field])
        elif isinstance(t, torch.Tensor):
            number_values.append(flat[k])
            k += 1
        else:
            number_values.append(t)
    vector_values, v = [], len(plain_numbers)
    for t in vectors:
        if isinstance(t, Pending):
            bins = t.batch.bins
            table = starts[id(t.batch)][1 if t.field == t.batch.LIMITS else 2]
            vector_values.append(flat[table + t.row * bins:table + (t.row + 1) * bins])
        elif isinstance(t, torch.Tensor):
            vector_values.append(flat[v:v + t.numel()])
            v += t.numel()
        else:
            vector_values.append([float(e) for e in t])
    return number_values, vector_values
