"""state_dict / load_state_dict: 4 steps, checkpoint, a fresh model and monitor from the
checkpoint, 4 more steps, against 8 uninterrupted steps: the same records and summaries."""
import io

import pytest
import torch
from torch import nn

from probes import PROBES, MemorySink, Monitor


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))


def batches(steps=8):
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(16, 10, generator=gen)
        x[:, [2, 7]] = 0  # always-zero inputs: frozen first-layer columns
        yield x, torch.randint(0, 3, (16,), generator=gen)


def train(model, opt, monitor, data):
    for x, y in data:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        monitor.step(loss)


def new(sink):
    model = net()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    return model, opt, Monitor([cls() for cls in PROBES.values()], sink=sink, every=3)


def test_a_monitor_resumed_from_its_state_dict_goes_on_as_if_never_stopped():
    whole = MemorySink()
    model, opt, monitor = new(whole)
    with monitor.attach(model):
        train(model, opt, monitor, batches())

    parts = MemorySink()
    model, opt, monitor = new(parts)
    data = batches()
    with monitor.attach(model):
        train(model, opt, monitor, [next(data) for _ in range(4)])
        monitor.flush()  # what train.py does before a checkpoint
        buf = io.BytesIO()
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "monitor": monitor.state_dict()}, buf)
        train(model, opt, monitor, [next(data)])  # a step after the checkpoint, lost with the process
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    parts.scalars = {k: [(s, v) for s, v in values if s < 4] for k, values in parts.scalars.items()}
    parts.histograms = {k: [(s, v) for s, v in values if s < 4] for k, values in parts.histograms.items()}
    model, opt, monitor = new(parts)  # a fresh init: everything must come from the checkpoint
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["opt"])
    data = batches()
    for _ in range(4):
        next(data)
    with monitor.attach(model):
        monitor.load_state_dict(saved["monitor"])
        train(model, opt, monitor, data)

    assert monitor.global_step == 8
    assert {k: v for k, v in whole.scalars.items()} == {k: v for k, v in parts.scalars.items() if v}
    assert {k: [s for s, _ in v] for k, v in whole.histograms.items()} == \
        {k: [s for s, _ in v] for k, v in parts.histograms.items() if v}
    resumed = monitor.summary()
    model_w, opt_w, monitor_w = new(MemorySink())
    with monitor_w.attach(model_w):
        train(model_w, opt_w, monitor_w, batches())
    assert resumed == monitor_w.summary()
    assert resumed["frozen"]["frozen_first_layer_inputs"] == [2, 7]
    assert resumed["dead_inputs"]["always_zero"] == [2, 7] and resumed["dead_inputs"]["examples"] == 128


def test_a_state_for_other_layers_is_refused():
    model, _, monitor = new(None)
    with monitor.attach(model):
        state = monitor.state_dict()
    other = nn.Sequential(nn.Linear(10, 4), nn.ReLU(), nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 3))
    _, _, monitor = new(None)
    with monitor.attach(other), pytest.raises((ValueError, RuntimeError)):
        monitor.load_state_dict(state)
