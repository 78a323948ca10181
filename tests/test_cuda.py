"""On a CUDA device: what the probes promise about cost and equality there.

CI has no GPU, so these skip there; they run wherever torch sees one. Written for the lent GPU
machine, they have not run there yet (no machine was lent when they were written): the first
session with one runs them (``python -m pytest tests/test_cuda.py``) and mends what they find. What they check cannot be seen on a CPU:

* between logging steps the probes make no host-device synchronisation at all (torch's
  sync debug mode turns every synchronising call into an error);
* the statistics logged on the GPU are those of the same step on the CPU;
* torch.compile with Inductor on the GPU: no recompilation between logging steps.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import models
import probes

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def small_mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))


def make(name: str, device: str) -> nn.Module:
    torch.manual_seed(0)
    model = small_mlp() if name == "mlp" else models.build(name)
    return model.to(device)


def train_steps(model, monitor, steps, device, no_sync_unless_logging=False, batch=32):
    """SGD steps on fixed random MNIST-shaped batches; with ``no_sync_unless_logging`` every
    step that does not log runs under ``torch.cuda.set_sync_debug_mode("error")``."""
    gen = torch.Generator().manual_seed(1)
    data = [(torch.rand(batch, 1, 28, 28, generator=gen), torch.randint(0, 10, (batch,), generator=gen))
            for _ in range(4)]
    data = [(x.to(device), y.to(device)) for x, y in data]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for i in range(steps):
        x, y = data[i % len(data)]
        strict = no_sync_unless_logging and not monitor.logging
        if strict:
            torch.cuda.set_sync_debug_mode("error")
        try:
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            monitor.step(loss)
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("name", ["mlp", "cnn", "deep-sigmoid"])
def test_no_host_sync_between_logging_steps(name):
    model = make(name, "cuda")
    with probes.watch(model, every=5, probes="all") as monitor:
        train_steps(model, monitor, 12, "cuda", no_sync_unless_logging=True)
        logged = monitor.sink.scalars
    assert any(tag.startswith("gradient_norm/") for tag in logged), sorted(logged)[:10]
    assert monitor.global_step == 12


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_gpu_statistics_equal_cpu(name):
    values = {}
    for device in ("cpu", "cuda"):
        model = make(name, device)
        with probes.watch(model, every=1, probes=["gradients", "activations"]) as monitor:
            train_steps(model, monitor, 1, device)
            values[device] = {tag: series[-1][1] for tag, series in monitor.sink.scalars.items()}
    assert values["cpu"].keys() == values["cuda"].keys()
    for tag, cpu in values["cpu"].items():
        if "dropout" in tag:  # random masks differ between the devices' generators
            continue
        assert values["cuda"][tag] == pytest.approx(cpu, rel=2e-3, abs=1e-5), tag


@pytest.mark.parametrize("order", ["attach-then-compile", "compile-then-attach"])
def test_inductor_no_recompile_between_logs(order):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = make("mlp", "cuda")
    compiled = None
    if order == "compile-then-attach":
        compiled = torch.compile(model)
    with probes.watch(model if compiled is None else compiled, every=4, probes="all") as monitor:
        compiled = compiled or torch.compile(model)
        train_steps(compiled, monitor, 9, "cuda")  # warm: compiled graphs and two logging steps
        frames = dict(counters["stats"])
        breaks = sum(counters["graph_break"].values())
        train_steps(compiled, monitor, 3, "cuda")  # steps 9-11 do not log... step 12 would
    assert dict(counters["stats"]) == frames, "the probes recompiled between logging steps"
    assert sum(counters["graph_break"].values()) == breaks
