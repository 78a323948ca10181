"""Statistics from a sample of blocks (``moments_sample``): what is read, how it is scaled, and
when the probes use it (a logging step close after the one before)."""
import pytest
import torch
from torch import nn

from probes import ActivationStats, GradientStats, MemorySink, Monitor, stats

PIECE, BLOCK = stats.PIECE, stats.SAMPLE_BLOCK


def blocks_at(x, rows):
    """The whole blocks ``rows`` of the flat ``x``, in order."""
    whole = x.numel() // BLOCK
    return x[:whole * BLOCK].reshape(whole, BLOCK)[rows].reshape(-1)


@pytest.mark.parametrize("host_records", [True, False])
def test_a_sampled_summary_is_its_blocks_scaled_to_the_whole(host_records):
    torch.manual_seed(0)
    n = 10 * PIECE + 123  # 640 whole blocks and a short one
    x = torch.randn(n).clamp_(min=0) * torch.linspace(0.5, 2.0, n)  # blocks differ: the right ones must be read
    budget = 2 * PIECE  # 128 blocks
    scratch = stats.Scratch(host_records=host_records)
    s = stats.summarize(x, 30, scratch, sample=2**12, zeros=True, moments_sample=budget)
    every = 5  # one block in 5
    rows = scratch.block_rows(640, every, x.device)  # the draw this step's summaries share
    assert torch.equal(rows // every, torch.arange(128)), "one block in each group of 5"
    assert len(set((rows % every).tolist())) > 1, "each group draws its own block"
    part = blocks_at(x, rows)
    scale = n / part.numel()
    number = lambda v: float(v)  # noqa: E731  (host numbers or 0-d tensors alike)
    assert part.numel() == budget
    assert number(s.hist.sum) == pytest.approx(float(part.double().sum()) * scale, rel=1e-5)
    assert number(s.hist.sum_squares) == pytest.approx(float((part.double() ** 2).sum()) * scale, rel=1e-5)
    assert number(s.norm) == pytest.approx((float((part.double() ** 2).sum()) * scale) ** 0.5, rel=1e-5)
    assert number(s.zero_fraction) == pytest.approx(float((part == 0).double().mean()), abs=1e-7)
    assert (number(s.hist.min), number(s.hist.max)) == (float(part.min()), float(part.max()))
    assert number(s.hist.num) == n
    counts = torch.as_tensor(s.hist.bucket_counts, dtype=torch.float64)
    assert float(counts.sum()) == pytest.approx(n, rel=1e-6)  # the picks in the blocks, scaled to all


def test_a_tensor_with_a_period_of_blocks_is_not_aliased():
    """Most of a GPT's attention-input gradient sits in each sequence's first positions: one heavy
    block in every 6. A stride of 2 from one offset read all of them or none (the norm 36-43% off,
    either way); a block drawn in each group estimates it."""
    period, periods = 6, 96
    x = torch.ones(periods, period, BLOCK)
    x[:, 0] = 10.0
    x = x.reshape(-1)
    true_norm = float(x.double().norm())
    for step in range(5):
        scratch = stats.Scratch()
        scratch.generator(x.device).manual_seed(step)
        s = stats.summarize(x, 30, scratch, sample=2**12, moments_sample=x.numel() // 2)  # one block in 2
        assert float(s.norm) == pytest.approx(true_norm, rel=0.2)


def test_small_tensors_and_exact_choices_read_everything():
    torch.manual_seed(1)
    x = torch.randn(3 * PIECE)
    exact = stats.summarize(x, 30, stats.Scratch(), sample=2**12)
    for budget in (None, 3 * PIECE, 4 * PIECE):
        s = stats.summarize(x, 30, stats.Scratch(), sample=2**12, moments_sample=budget)
        assert float(s.hist.sum) == float(exact.hist.sum) and float(s.hist.max) == float(exact.hist.max)
    assert stats.moments_budget("auto", close=False) is None
    assert stats.moments_budget("auto", close=True) == stats.MOMENTS_SAMPLE
    assert stats.moments_budget("exact", close=True) is None and stats.moments_budget(None, close=True) is None
    assert stats.moments_budget(PIECE * 3, close=False) == PIECE * 3


@pytest.mark.parametrize("bad", [1000, "sampled", 2.5, True])
def test_a_moments_sample_that_cannot_work_is_refused_when_the_probe_is_made(bad):
    for cls in (ActivationStats, GradientStats):
        with pytest.raises(ValueError, match="moments_sample"):
            cls(moments_sample=bad)


def wide_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 8192), nn.ReLU(), nn.Linear(8192, 1))  # a 128-batch output: 1 M elements


def run(every, steps, **kw):
    model = wide_net()
    sink = MemorySink()
    monitor = Monitor([ActivationStats(**kw), GradientStats(**kw)], sink=sink, every=every).attach(model)
    torch.manual_seed(2)
    xs = [torch.randn(128, 32) for _ in range(steps)]
    exact = []
    for x in xs:
        with torch.no_grad():  # not a training pass: not measured
            exact.append(float(model[0](x).double().norm()))
        model(x).pow(2).mean().backward()
        monitor.step()
        model.zero_grad()
    monitor.detach()
    norms = {s: h.sum_squares ** 0.5 for s, h in sink.histograms["activations/0"]}
    return norms, exact, sink


def test_logging_every_step_samples_from_the_second_log_on_and_sparse_logs_stay_exact():
    norms, exact, sink = run(every=1, steps=3)
    assert norms[0] == pytest.approx(exact[0], rel=1e-5)  # the first log: nothing before it, exact
    for step in (1, 2):  # close after the one before: from two blocks of a 1 M-element output
        assert norms[step] != pytest.approx(exact[step], rel=1e-5)
        assert norms[step] == pytest.approx(exact[step], rel=0.05)
    exact_run, exact_values, exact_sink = run(every=1, steps=3, moments_sample="exact")
    for step in (0, 1, 2):
        assert exact_run[step] == pytest.approx(exact_values[step], rel=1e-5)
    sampled_grads, exact_grads = (dict(sk.scalars["output_grad_norm/1"]) for sk in (sink, exact_sink))
    assert sampled_grads[0] == pytest.approx(exact_grads[0], rel=1e-6)  # the ReLU's 1 M-element output gradient
    assert sampled_grads[1] != pytest.approx(exact_grads[1], rel=1e-5)
    assert sampled_grads[1] == pytest.approx(exact_grads[1], rel=0.05)
    # parameter gradients are always read whole
    assert dict(sink.scalars["grad_norm/2.weight"]) == pytest.approx(dict(exact_sink.scalars["grad_norm/2.weight"]))
    sparse, exact_sparse, _ = run(every=2, steps=3)
    assert sparse[2] != pytest.approx(exact_sparse[2], rel=1e-5)  # 2 steps apart is still close


def test_the_default_interval_reads_every_element():
    model = wide_net()
    sink = MemorySink()
    monitor = Monitor([ActivationStats()], sink=sink, every=stats.CLOSE_LOGS).attach(model)
    torch.manual_seed(2)
    for step in range(stats.CLOSE_LOGS + 1):
        x = torch.randn(128, 32)
        with torch.no_grad():
            h = model[0](x)
        model(x).sum().backward()
        monitor.step()
    monitor.detach()
    (first, h0), (last, h1) = sink.histograms["activations/0"]
    assert (first, last) == (0, stats.CLOSE_LOGS)
    assert h1.max == float(h.max()) and h1.sum_squares ** 0.5 == pytest.approx(float(h.double().norm()), rel=1e-5)
