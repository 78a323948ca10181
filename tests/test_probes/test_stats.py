"""Device-side statistics against numpy."""
import numpy as np
import torch

from probes import stats


def test_histogram_counts_match_numpy():
    torch.manual_seed(0)
    x = torch.randn(10_000)
    h = stats.histogram(x, bins=20)
    counts, edges = np.histogram(x.numpy(), bins=20, range=(float(h.min), float(h.max)))
    assert np.abs(h.bucket_counts.numpy() - counts).max() <= 2  # float edge rounding only
    assert h.bucket_counts.sum().item() == 10_000
    assert np.allclose(h.bucket_limits.numpy(), edges[1:], rtol=1e-5, atol=1e-6)
    assert h.sum.item() == np.float32(x.sum()).item() or abs(h.sum.item() - x.sum().item()) < 1e-2


def test_histogram_of_constant_and_nonfinite():
    h = stats.histogram(torch.tensor([2.0, 2.0, float("nan"), float("inf")]), bins=4)
    assert h.bucket_counts.sum().item() == 4
    assert stats.nonfinite_count(torch.tensor([1.0, float("nan"), float("-inf")])).item() == 2


def test_zero_and_saturated_fractions():
    x = torch.tensor([0.0, 0.0, 1.0, -2.0])
    assert stats.zero_fraction(x).item() == 0.5
    y = torch.tensor([0.0005, 0.5, 0.9995, 0.998])
    assert stats.saturated_fraction(y, 0.0, 1.0).item() == 0.5
