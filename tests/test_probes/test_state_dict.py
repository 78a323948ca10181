"""state_dict / load_state_dict: 4 steps, checkpoint, a fresh model and monitor from the
checkpoint, 4 more steps, against 8 uninterrupted steps: the same records and summaries, and
the same sampled histograms bitwise (the sampler's generator is part of the checkpoint)."""
import io

import pytest
import torch
from torch import nn

from conftest import batches, fit
from probes import PROBES, ActivationStats, GradientStats, MemorySink, Monitor

SAMPLE = 16  # fewer than every layer output's elements: the histograms are sampled


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))


def eight_batches():
    return batches(8, 16, 10, seed=1, zero=(2, 7))  # always-zero inputs: frozen first-layer columns


def train(model, opt, monitor, data):
    fit(model, data, opt, monitor)


def new(sink):
    model = net()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    sampled = {ActivationStats: {"hist_sample": SAMPLE}, GradientStats: {"hist_sample": SAMPLE}}
    return model, opt, Monitor([cls(**sampled.get(cls, {})) for cls in PROBES.values()], sink=sink, every=3)


def test_a_monitor_resumed_from_its_state_dict_goes_on_as_if_never_stopped():
    whole = MemorySink()
    model, opt, monitor = new(whole)
    with monitor.attach(model):
        train(model, opt, monitor, eight_batches())

    parts = MemorySink()
    model, opt, monitor = new(parts)
    data = eight_batches()
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
    data = eight_batches()
    for _ in range(4):
        next(data)
    with monitor.attach(model):
        monitor.load_state_dict(saved["monitor"])
        train(model, opt, monitor, data)

    assert monitor.global_step == 8
    assert {k: v for k, v in whole.scalars.items()} == {k: v for k, v in parts.scalars.items() if v}
    assert whole.histograms == {k: v for k, v in parts.histograms.items() if v}  # contents, bitwise
    resumed = monitor.summary()
    model_w, opt_w, monitor_w = new(MemorySink())
    with monitor_w.attach(model_w):
        train(model_w, opt_w, monitor_w, eight_batches())
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
