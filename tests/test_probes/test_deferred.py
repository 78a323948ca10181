"""Small tensors summarised together at collect time (probes.stats.Deferred) give the statistics
one summary each gives: the same histogram edges and counts to the bit, the same extremes and
zero fractions, sums to float32 rounding (they are taken in float64), NaN/Inf handled alike."""
import math

import pytest
import torch

from probes import stats
from probes.records import Histogram, Scalar, to_host


def cases():
    gen = torch.Generator().manual_seed(0)
    relu = torch.randn(32, 128, generator=gen).relu()  # zeros that mean something
    bad = torch.randn(200, generator=gen)
    bad[3], bad[50], bad[77] = float("nan"), float("inf"), float("-inf")
    return {"relu": relu, "normal": torch.randn(10, 10, generator=gen) * 1e-3, "constant": torch.full((7,), 2.5),
            "one": torch.tensor([0.0]), "nonfinite": bad, "big": torch.rand(25088, generator=gen) * 1e4,
            "float64": torch.randn(33, generator=gen, dtype=torch.float64)}


def records(defer: bool):
    scratch = stats.Scratch(defer=defer)
    out = []
    for name, x in cases().items():
        s = stats.summarize(x, 30, scratch, sample=None, zeros=True)
        out += [Histogram(f"h/{name}", 0, s.hist), Scalar(f"z/{name}", 0, s.zero_fraction), Scalar(f"n/{name}", 0, s.norm)]
    scratch.new_step()  # what Probe.collect does: the deferred batch is resolved
    return to_host(out)


def test_deferred_summaries_equal_one_summary_each():
    alone, together = records(False), records(True)
    assert [r.tag for r in alone] == [r.tag for r in together]
    for a, b in zip(alone, together):
        if a.tag.startswith("h/"):
            assert (a.min, a.max, a.num) == (b.min, b.max, b.num), a.tag
            assert a.bucket_limits == b.bucket_limits and a.bucket_counts == b.bucket_counts, a.tag
            assert b.sum == pytest.approx(a.sum, rel=1e-5, abs=1e-6) and b.sum_squares == pytest.approx(a.sum_squares, rel=1e-5)
        elif a.tag.startswith("z/"):
            assert a.value == pytest.approx(b.value, abs=1e-7), a.tag
        else:
            assert (math.isfinite(a.value), math.isnan(a.value)) == (math.isfinite(b.value), math.isnan(b.value)), a.tag
            if math.isfinite(a.value):
                assert b.value == pytest.approx(a.value, rel=1e-5), a.tag


def test_a_tensor_changed_in_place_after_it_was_summarised_keeps_its_first_values():
    scratch = stats.Scratch(defer=True)
    x = torch.arange(10.0)
    s = stats.summarize(x, 5, scratch)
    x.zero_()  # e.g. an in-place ReLU or a gradient clip later in the step
    scratch.new_step()
    (h,) = to_host([Histogram("h", 0, s.hist)])
    assert (h.min, h.max, h.sum) == (0.0, 9.0, 45.0)


def test_large_sampled_and_accelerator_tensors_are_not_deferred(monkeypatch):
    scratch = stats.Scratch(defer=True)
    assert isinstance(stats.summarize(torch.ones(stats.DEFER_MAX + 1), 30, scratch).norm, torch.Tensor)
    assert isinstance(stats.summarize(torch.ones(1000), 30, scratch, sample=100).norm, torch.Tensor)
    monkeypatch.setattr(stats, "host_reads_are_free", lambda device: False)
    assert isinstance(stats.summarize(torch.ones(10), 30, scratch).norm, torch.Tensor)
    monkeypatch.undo()
    assert isinstance(stats.summarize(torch.ones(10), 30, scratch).norm, stats.Pending)
