"""What a probe hands over: records that still live on the device.

A probe measures; a sink shows (cockpit's quantities vs instruments). In between, records
carry device tensors so that :class:`probes.monitor.Monitor` can move everything a logging
step produced to the host in a single transfer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Union

import torch

from .stats import Hist

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
    """Move every tensor of ``records`` to the host with one copy (one sync per logging step)."""
    if not records:
        return []
    # One op per tensor (a view), then one cat, which promotes the dtypes to a common one, and
    # one copy: a cnn logging step hands over ~600 small tensors, and three ops each (a
    # float copy among them) took a third more time on a CPU.
    parts: List[torch.Tensor] = []
    for r in records:
        if isinstance(r, Scalar):
            parts.append(r.value.detach().reshape(1))
        else:
            parts.extend(t.detach().reshape(-1) for t in r.hist)
    device = parts[0].device
    if any(p.device != device for p in parts):
        parts = [p.to(device) for p in parts]
    flat = torch.cat(parts).to("cpu", torch.float64).tolist()
    out, i = [], 0
    for r in records:
        if isinstance(r, Scalar):
            out.append(HostScalar(r.tag, r.step, flat[i]))
            i += 1
        else:
            bins = r.hist.bucket_counts.numel()
            head = flat[i:i + 5]
            i += 5
            limits, counts = flat[i:i + bins], flat[i + bins:i + 2 * bins]
            i += 2 * bins
            out.append(HostHistogram(r.tag, r.step, *head, limits, counts))
    return out
