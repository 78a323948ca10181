"""The probes under torch.compile, in both orders: between logging steps no graph break and no
recompilation caused by them (Dynamo's own counters), the per-step probes still measuring
inside the compiled graph, logging steps recording what an eager run records, and a warning
(never silence) when compiled code cannot run the hooks.

Dynamo's "eager" backend keeps these fast (no Inductor): what is counted is Dynamo's tracing,
which is the same whatever the backend.
"""
import warnings

import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

import probes

STEPS, EVERY, BATCH = 12, 4, 32


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def data():
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(BATCH, 8, generator=gen), torch.randint(0, 3, (BATCH,), generator=gen)) for _ in range(STEPS)]


def dynamo_counts(cnt):
    return {"frames": cnt.frame_count, "graphs": counters["stats"]["unique_graphs"],
            "breaks": sum(counters["graph_break"].values()), "recompiles": counters["recompiles"].copy()}



def train_steps(net, opt, monitor):
    """The loop of these tests, a step at a time: the loss handed to the monitor, steps counted
    by its optimizer hook."""
    for x, y in data():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        monitor.log_loss(loss)
        opt.step()
        yield

def train(order, every=EVERY, probe_choice="all", per_step=None):
    """12 steps of the mlp with ``probes.watch`` in ``order``; Dynamo's counters after each step."""
    torch._dynamo.reset()
    counters.clear()
    model, cnt = mlp(), CompileCounterWithBackend("eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = probes.MemorySink()
    net, monitor = model, None
    if order in ("eager", "attach_then_compile", "attach_then_model_compile"):
        monitor = probes.watch(model, probes=probe_choice, every=every, optimizer=opt, sink=sink)
    if order in ("attach_then_compile", "compile_then_attach"):
        net = torch.compile(model, backend=cnt)
    elif order == "attach_then_model_compile":
        model.compile(backend=cnt)
    if order == "compile_then_attach":  # a graph without hooks is cached before the probes exist
        net(torch.randn(BATCH, 8)).sum().backward()
        opt.zero_grad()
        monitor = probes.watch(net, probes=probe_choice, every=every, optimizer=opt, sink=sink)
    seen = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in train_steps(net, opt, monitor):
            seen.append(dynamo_counts(cnt))
            if per_step:
                per_step(monitor)
        monitor.__exit__(None, None, None)
    return monitor, sink, seen, [str(w.message) for w in caught]


@pytest.mark.parametrize("order", ["attach_then_compile", "attach_then_model_compile"])
def test_between_logs_no_graph_break_no_recompile_and_the_per_step_probes_still_measure(order):
    examples = []
    monitor, sink, seen, caught = train(order, per_step=lambda m: examples.append(m["dead_units"].examples["1"]))
    assert seen[0]["frames"] == 0  # step 0 logs: it ran eagerly (force_eager), nothing compiled
    assert seen[1]["frames"] >= 1  # the first step between logs compiled the model (with the hooks)
    assert all(s == seen[1] for s in seen[1:]), seen  # then nothing more: no recompile, at logs or between
    assert seen[-1]["breaks"] == 0 and not seen[-1]["recompiles"]
    # the dead-units hooks ran on every step, compiled ones included (their count is on the device)
    assert examples == [BATCH * (i + 1) for i in range(STEPS)]
    assert [s for s, _ in sink.scalars["train/loss"]] == list(range(STEPS))
    if probes.DeadInputs.traceable:
        assert not caught, caught
    else:  # its hooks keep Python counters: left out of compiled passes, and said so
        assert any("dead_inputs cannot run inside torch.compile" in w for w in caught), caught


def test_compile_then_attach_is_not_silently_blind():
    """torch.compile(model) called before the probes existed keeps running its graph without
    their hooks (Dynamo does not guard on hooks of modules that had none): the monitor notices
    that no training pass reached them between logs and says what to do."""
    examples = []
    monitor, sink, seen, caught = train("compile_then_attach", per_step=lambda m: examples.append(
        m["dead_units"].examples["1"]))
    blind = [w for w in caught if "no training forward pass" in w]
    assert len(blind) == 1 and "Attach the probes before compiling" in blind[0] \
        and "torch.compiler.reset()" in blind[0]
    # what it says is so: only the logging steps (0, 4, 8), run eagerly, were counted
    assert examples == [BATCH] * 4 + [2 * BATCH] * 4 + [3 * BATCH] * 4
    assert not seen[-1]["breaks"]


def test_with_torch_compiler_reset_after_attaching_compile_then_attach_measures_every_step():
    """The fix the warning gives: after torch.compiler.reset() the next call traces the hooks."""
    torch._dynamo.reset()
    model, cnt = mlp(), CompileCounterWithBackend("eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    net = torch.compile(model, backend=cnt)
    net(torch.randn(BATCH, 8)).sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at all
        with probes.watch(net, probes=["dead_units", "nonfinite"], every=EVERY, optimizer=opt) as monitor:
            torch.compiler.reset()
            for _ in train_steps(net, opt, monitor):
                pass
    assert monitor["dead_units"].examples["1"] == STEPS * BATCH


def test_logging_steps_record_what_an_eager_run_records():
    """Same weights, same batches: the compiled run's logged scalars and histograms (logging
    steps run eagerly; the steps between run the compiled graph) match the eager run's."""
    _, eager, _, _ = train("eager")
    _, compiled, _, _ = train("attach_then_compile")
    assert set(compiled.scalars) == set(eager.scalars) and len(eager.scalars) > 20
    for tag, values in eager.scalars.items():
        got = compiled.scalars[tag]
        assert [s for s, _ in got] == [s for s, _ in values], tag
        assert [v for _, v in got] == pytest.approx([v for _, v in values], rel=1e-5, abs=1e-7, nan_ok=True), tag
    assert set(compiled.histograms) == set(eager.histograms)
    for tag, values in eager.histograms.items():
        for (s1, h1), (s2, h2) in zip(values, compiled.histograms[tag]):
            assert s1 == s2 and h1.num == h2.num
            assert h1.bucket_counts == pytest.approx(h2.bucket_counts, abs=1), tag
            assert (h1.min, h1.max, h1.sum) == pytest.approx((h2.min, h2.max, h2.sum), rel=1e-4, abs=1e-6), tag


def test_dead_units_and_the_sentinel_under_compile_find_what_they_find_eagerly():
    """A layer killed mid-run (bias -100 from step 5, a step between logs) is dead on the recent
    window with the step it fell silent, compiled as eagerly; a NaN weight is named."""
    def kill(monitor):
        if monitor.global_step == 5:
            with torch.no_grad():
                monitor.model[2].bias.fill_(-100.0)

    summaries = []
    for order in ("eager", "attach_then_compile"):
        monitor, _, seen, _ = train(order, every=2, probe_choice=["dead_units", "nonfinite"], per_step=kill)
        summaries.append(monitor.summary())
        assert seen[-1]["breaks"] == 0 and not seen[-1]["recompiles"]
    assert summaries[0] == summaries[1]
    layer = summaries[1]["dead_units"]["layers"]["3"]
    assert layer["recent_dead"] == 16 and {u[2] for u in layer["fired_then_silent"]} == {5}

    def poison(monitor):
        if monitor.global_step == 5:
            with torch.no_grad():
                monitor.model[4].weight[0, 0] = float("nan")

    monitor, _, seen, _ = train("attach_then_compile", probe_choice=["dead_units", "nonfinite"], per_step=poison)
    event = monitor["nonfinite"].event
    assert (event.step, event.where, event.name) == (5, "parameter", "4.weight")
    assert seen[-1]["breaks"] == 0
