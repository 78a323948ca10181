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
    scratch = stats.Scratch(host_records=defer)
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
    scratch = stats.Scratch(host_records=True)
    x = torch.arange(10.0)
    s = stats.summarize(x, 5, scratch)
    x.zero_()  # e.g. an in-place ReLU or a gradient clip later in the step
    scratch.new_step()
    (h,) = to_host([Histogram("h", 0, s.hist)])
    assert (h.min, h.max, h.sum) == (0.0, 9.0, 45.0)


def test_large_sampled_and_accelerator_tensors_are_not_deferred(monkeypatch):
    scratch = stats.Scratch(host_records=True)
    # summarised at once, finished on the host (Python numbers)
    assert isinstance(stats.summarize(torch.ones(stats.DEFER_MAX + 1), 30, scratch).norm, float)
    assert isinstance(stats.summarize(torch.ones(1000), 30, scratch, sample=100).norm, float)
    monkeypatch.setattr(stats, "host_reads_are_free", lambda device: False)  # an accelerator: tensors
    assert isinstance(stats.summarize(torch.ones(10), 30, scratch).norm, torch.Tensor)
    monkeypatch.undo()
    assert isinstance(stats.summarize(torch.ones(10), 30, scratch).norm, stats.Pending)
    several_processes = stats.Scratch(host_records=False)  # records reduced across processes need tensors
    assert isinstance(stats.summarize(torch.ones(10000), 30, several_processes).norm, torch.Tensor)


@pytest.mark.parametrize("on_host", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("pieces", [False, True])
def test_a_relu_output_summarised_from_its_input_pass_equals_its_own_summary(layout, pieces, on_host, monkeypatch):
    """From the second logging step on, a ReLU's output summary comes from its input's pass
    (probes.stats.summarize(rectified_of=...)): the same numbers, to the bit, as its own pass."""
    if pieces:
        monkeypatch.setattr(stats, "PIECE", 2**12)  # several pieces per tensor
    gen = torch.Generator().manual_seed(0)
    memory = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(16, 8, 12, 12, generator=gen).contiguous(memory_format=memory)
    x[0, 0] = 0.0  # exact zeros in the input too
    relu = torch.relu(x)

    def step(scratch, derive):
        stats.summarize(x, 30, scratch, sample=1000, zeros=False)
        s = stats.summarize(relu, 30, scratch, sample=1000, zeros=True, rectified_of=x if derive else None)
        scratch.new_step()
        return s

    own = stats.Scratch(host_records=on_host)
    derived = stats.Scratch(host_records=on_host)
    for _ in range(3):  # the first step learns that a ReLU follows, the next ones derive
        a, b = step(own, False), step(derived, True)
    assert derived.rectified_next and not own.rectified_next
    assert isinstance(b.norm, float) == on_host
    host = [to_host([Histogram("h", 0, s.hist), Scalar("z", 0, s.zero_fraction), Scalar("n", 0, s.norm)])
            for s in (a, b)]
    assert host[0] == host[1]


def test_a_relu_whose_input_changed_in_place_gets_its_own_pass():
    x = torch.randn(4000)
    scratch = stats.Scratch()
    for i in range(3):
        stats.summarize(x, 30, scratch, sample=100, zeros=False)
        if i == 2:
            x.mul_(2)  # the input changed after its summary (learnt as a ReLU's input the steps before)
        r = torch.relu(x)
        s = stats.summarize(r, 30, scratch, sample=100, zeros=True, rectified_of=x)
        scratch.new_step()
    assert scratch.rectified_next
    assert float(s.hist.max) == float(r.max()) and float(s.norm) == pytest.approx(float(r.norm()), rel=1e-5)


@pytest.mark.parametrize("sample", [None, 1000])
def test_a_summary_finished_on_the_host_equals_the_tensor_one_to_the_bit(sample):
    """One process on a CPU: the edges, zero fraction and norm in Python float32 arithmetic give
    the numbers the tensor path gives (several processes, accelerators), to the bit."""
    gen = torch.Generator().manual_seed(1)
    tensors = [torch.randn(20000, generator=gen) * 1e-3, torch.randn(30, 8000, generator=gen).relu(),
               torch.full((5000,), -2.0), torch.rand(9000, generator=gen) * 1e6 - 3e5]
    for x in tensors:
        on_host = stats.summarize(x, 30, stats.Scratch(host_records=True), sample=sample, zeros=True)
        assert isinstance(on_host.norm, float)
        as_tensors = stats.summarize(x, 30, stats.Scratch(host_records=False), sample=sample, zeros=True)
        a, b = to_host([Histogram("h", 0, on_host.hist), Scalar("z", 0, on_host.zero_fraction),
                        Scalar("n", 0, on_host.norm)]), \
            to_host([Histogram("h", 0, as_tensors.hist), Scalar("z", 0, as_tensors.zero_fraction),
                     Scalar("n", 0, as_tensors.norm)])
        assert a == b
