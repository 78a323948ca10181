"""Device-side statistics against numpy."""
import numpy as np
import pytest
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
    assert h.bucket_counts.tolist() == [2, 0, 0, 2]  # NaN and Inf are binned as 0: values 2, 2, 0, 0
    assert stats.nonfinite_count(torch.tensor([1.0, float("nan"), float("-inf")])).item() == 2


def test_zero_and_saturated_fractions():
    x = torch.tensor([0.0, 0.0, 1.0, -2.0])
    assert stats.zero_fraction(x).item() == 0.5
    y = torch.tensor([0.0005, 0.5, 0.9995, 0.998])
    assert stats.saturated_fraction(y, 0.0, 1.0).item() == 0.5


def direct_summary(x, bins):
    """What summarize must give, from numpy and plain torch."""
    finite = torch.nan_to_num(x.reshape(-1).float(), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(finite.min()), float(finite.max())
    counts, _ = np.histogram(finite.numpy(), bins=bins, range=(lo, hi))
    return dict(min=lo, max=hi, sum=float(finite.double().sum()), sum_squares=float((finite.double() ** 2).sum()),
                counts=counts, zero_fraction=float((x == 0).double().mean()))


@pytest.fixture(params=["cpu path", "accelerator path"])
def stats_path(request, monkeypatch):
    """Run each check through both code paths: the CPU one (reads numbers back, bincount)
    and the one for devices where a read-back is a sync (nan_to_num always, scatter_add_)."""
    if request.param == "accelerator path":
        monkeypatch.setattr(stats, "host_reads_are_free", lambda device: False)
    return request.param


@pytest.mark.parametrize("case", ["relu", "nonfinite", "constant", "tiny"])
def test_summarize_matches_direct_computation(case, stats_path):
    torch.manual_seed(0)
    x = {"relu": torch.randn(64, 8, 9, 9).relu(),
         "nonfinite": torch.tensor([0.0, 1.0, -2.0, float("nan"), float("inf"), 0.0, 3.5]),
         "constant": torch.full((50,), 2.0),
         "tiny": torch.tensor([1e-30, 0.0, -1e-30])}[case]
    s = stats.summarize(x, bins=12, scratch=stats.Scratch())
    want = direct_summary(x, 12)
    assert s.hist.min.item() == pytest.approx(want["min"]) and s.hist.max.item() == pytest.approx(want["max"])
    assert s.hist.num.item() == x.numel()
    assert s.hist.sum.item() == pytest.approx(want["sum"], rel=1e-5, abs=1e-5)
    assert s.hist.sum_squares.item() == pytest.approx(want["sum_squares"], rel=1e-5, abs=1e-30)
    counts = s.hist.bucket_counts.numpy()
    if case == "relu":  # 41,472 float32 values: one within rounding of an edge may fall on its other side
        assert np.abs(counts - want["counts"]).max() <= 2
    elif case == "nonfinite":  # 7 values, none near an edge: exactly numpy's buckets
        assert counts.tolist() == want["counts"].tolist()
    else:
        # A range narrower than 1e-12 is one bucket: the width is clamped to 1e-12 / bins, so
        # every value lands in bucket 0 (numpy would spread "tiny" over 3 buckets, and widen
        # "constant"'s empty range to +-0.5, putting it in the middle one).
        assert counts.tolist() == [x.numel()] + [0] * 11
    assert s.hist.bucket_counts.sum().item() == x.numel()
    assert s.zero_fraction.item() == pytest.approx(want["zero_fraction"], abs=1e-7)
    assert s.norm.item() == pytest.approx(torch.linalg.vector_norm(x.float()).item(), rel=1e-5, nan_ok=True)


def test_sampled_bucket_counts_estimate_the_exact_ones_and_leave_the_global_rng_alone(stats_path):
    torch.manual_seed(0)
    x = torch.randn(400_000)
    x[::3] = 0.0
    exact = stats.summarize(x, bins=20)
    state = torch.get_rng_state()
    sampled = stats.summarize(x, bins=20, scratch=stats.Scratch(), sample=10_000)
    assert torch.equal(torch.get_rng_state(), state)
    for field in ("min", "max", "num", "sum", "sum_squares", "bucket_limits"):
        assert torch.equal(getattr(sampled.hist, field), getattr(exact.hist, field)), field
    assert sampled.zero_fraction.item() == exact.zero_fraction.item() == pytest.approx(1 / 3, abs=1e-5)
    counts = sampled.hist.bucket_counts
    # estimates, not the exact counts: each is a count of the 10,000 picked, times 40
    assert not torch.equal(counts, exact.hist.bucket_counts)
    assert torch.equal(counts, (counts / 40).round() * 40) and counts.sum().item() == x.numel()
    # each bucket within 5 standard errors of its exact count
    p = exact.hist.bucket_counts / x.numel()
    se = (p * (1 - p) / 10_000).sqrt() * x.numel()
    assert ((counts - exact.hist.bucket_counts).abs() <= 5 * se + 1).all()


def test_zero_count_is_exact_beyond_float32_integers(stats_path):
    x = torch.ones(2**24 + 6)
    x[:5] = 0.0  # 2**24 + 1 non-zeros: a float32 count rounds to 2**24, and 6 zeros instead of 5
    assert stats.summarize(x).zero_fraction.item() == pytest.approx(5 / x.numel(), rel=1e-6)


def test_summary_of_a_channels_last_tensor_reads_it_in_place():
    torch.manual_seed(0)
    x = torch.randn(4, 8, 5, 5).relu().contiguous(memory_format=torch.channels_last)
    assert stats._flat(x).data_ptr() == x.data_ptr()  # a view, no copy
    a, b = stats.summarize(x), stats.summarize(x.contiguous())
    for field in ("min", "max", "num", "bucket_counts"):
        assert torch.equal(getattr(a.hist, field), getattr(b.hist, field)), field
    assert a.zero_fraction.item() == b.zero_fraction.item()
    assert a.hist.sum.item() == pytest.approx(b.hist.sum.item(), rel=1e-6)


@pytest.mark.parametrize("nonfinite", [False, True])
def test_leaving_the_zero_count_out_changes_nothing_else(nonfinite, stats_path):
    torch.manual_seed(0)
    x = torch.randn(300_000).relu()
    if nonfinite:
        x[7], x[9] = float("nan"), float("inf")
    with_zeros = stats.summarize(x, bins=16, scratch=stats.Scratch(), sample=5_000)
    without = stats.summarize(x, bins=16, scratch=stats.Scratch(), sample=5_000, zeros=False)
    assert without.zero_fraction is None and with_zeros.zero_fraction.item() > 0.4
    for field in stats.Hist._fields:
        assert torch.equal(getattr(without.hist, field), getattr(with_zeros.hist, field)), field
    assert torch.equal(without.norm, with_zeros.norm) or (without.norm.isnan() and with_zeros.norm.isnan())


def test_a_view_of_the_tensor_summarised_last_gets_its_summary_and_an_in_place_write_does_not():
    torch.manual_seed(0)
    x = torch.randn(64, 8, 30, 30).relu().contiguous(memory_format=torch.channels_last)  # 460,800 elements
    scratch = stats.Scratch()
    first = stats.summarize(x, bins=20, scratch=scratch, sample=4_096)
    view = x.permute(0, 2, 3, 1).reshape(64, -1)  # NHWC rows: a view of channels_last memory
    assert view.data_ptr() == x.data_ptr()
    assert stats.summarize(view, bins=20, scratch=scratch, sample=4_096) is first  # no pass
    fresh = stats.summarize(x.contiguous(), bins=20, scratch=stats.Scratch(), sample=4_096)
    for field in ("min", "max", "num"):
        assert torch.equal(getattr(first.hist, field), getattr(fresh.hist, field)), field
    assert first.zero_fraction.item() == fresh.zero_fraction.item()
    # asked for less (no zero count), the same numbers; asked for other bins, a new pass
    assert stats.summarize(x, bins=20, scratch=scratch, sample=4_096, zeros=False).zero_fraction is None
    assert stats.summarize(x, bins=10, scratch=scratch, sample=4_096) is not first
    last = stats.summarize(x, bins=20, scratch=scratch, sample=4_096)
    x.mul_(2)  # the same memory, written since: its version moved on
    again = stats.summarize(x, bins=20, scratch=scratch, sample=4_096)
    assert again is not last and again.hist.max.item() == pytest.approx(2 * last.hist.max.item())
    # a copy in another order is the same values only when the caller says so
    copy = x.contiguous()
    assert stats.summarize(copy, bins=20, scratch=scratch, sample=4_096, same_values_as=x) is again
    scratch.new_step()  # a new logging step remembers nothing
    assert stats.summarize(x, bins=20, scratch=scratch, sample=4_096) is not again


def test_a_tensor_of_several_pieces_sums_as_one(stats_path):
    torch.manual_seed(0)
    x = torch.randn(3 * stats.PIECE + 123)
    x[::5] = 0.0
    s = stats.summarize(x, bins=12, scratch=stats.Scratch(), sample=1_000)
    want = direct_summary(x, 12)
    assert s.hist.min.item() == want["min"] and s.hist.max.item() == want["max"]
    assert s.hist.sum.item() == pytest.approx(want["sum"], rel=1e-4, abs=1e-2)
    assert s.hist.sum_squares.item() == pytest.approx(want["sum_squares"], rel=1e-5)
    assert s.zero_fraction.item() == pytest.approx(want["zero_fraction"], abs=1e-7)
    assert s.hist.bucket_counts.sum().item() == pytest.approx(x.numel())
