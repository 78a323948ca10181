"""Pure tensor statistics used by the probes.

Everything here stays on the tensor's device and returns tensors, never Python numbers:
turning a statistic into a number forces a device sync, so that is left to the one
transfer per logging step that :class:`probes.monitor.Monitor` makes.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

DEFAULT_BINS = 30
SATURATION_TOL = 1e-3  # "saturated" = within 1e-3 of an activation's bound (issue 2)


class Hist(NamedTuple):
    """A histogram in TensorBoard's raw form; every field is a tensor on the source device."""

    min: torch.Tensor
    max: torch.Tensor
    num: torch.Tensor
    sum: torch.Tensor
    sum_squares: torch.Tensor
    bucket_limits: torch.Tensor  # right edges, shape (bins,)
    bucket_counts: torch.Tensor  # shape (bins,)


def histogram(x: torch.Tensor, bins: int = DEFAULT_BINS) -> Hist:
    """Histogram of the finite values of ``x`` with ``bins`` equal-width buckets, on device.

    ``torch.histc`` needs its range as Python floats (a sync); here the range stays a tensor
    and values are binned with ``scatter_add_``. Non-finite values are binned as 0 and
    should be counted separately (see :func:`nonfinite_count`).
    """
    x = x.detach().reshape(-1).float()
    finite = torch.isfinite(x)
    x = torch.where(finite, x, torch.zeros((), device=x.device))
    lo, hi = torch.aminmax(x) if x.numel() else (x.new_zeros(()), x.new_zeros(()))
    width = torch.clamp(hi - lo, min=1e-12) / bins
    index = ((x - lo) / width).floor().clamp_(0, bins - 1).long()
    counts = torch.zeros(bins, device=x.device).scatter_add_(0, index, torch.ones_like(x))
    limits = lo + width * torch.arange(1, bins + 1, device=x.device)
    num = torch.tensor(float(x.numel()), device=x.device)
    return Hist(lo, hi, num, x.sum(), (x * x).sum(), limits, counts)


def zero_fraction(x: torch.Tensor) -> torch.Tensor:
    """Fraction of elements that are exactly zero (dead ReLU outputs, zero gradients)."""
    if x.numel() == 0:
        return x.new_zeros((), dtype=torch.float32)
    return 1.0 - torch.count_nonzero(x).float() / x.numel()


def nonfinite_count(x: torch.Tensor) -> torch.Tensor:
    """Number of NaN or infinite elements."""
    return (~torch.isfinite(x)).sum().float()


def saturated_fraction(y: torch.Tensor, low: float, high: float, tol: float = SATURATION_TOL) -> torch.Tensor:
    """Fraction of outputs within ``tol`` of either bound of a squashing activation."""
    y = y.detach()
    near = (y <= low + tol) | (y >= high - tol)
    return near.float().mean()


def norm(x: torch.Tensor) -> torch.Tensor:
    """L2 norm over all elements, in float32 whatever the input dtype."""
    return torch.linalg.vector_norm(x.detach().float())
