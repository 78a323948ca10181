"""Probes cost nothing between logging steps: no hooks on the model, no reads of device
values back to the host; and a logging step moves its records to the host once."""
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import probes
import probes.monitor
from probes import ActivationStats, GradientStats, MemorySink, Monitor

from conftest import hook_count
from test_probes import small_net

PROBES_DIR = str(Path(probes.__file__).resolve().parent)
# every way a tensor's value reaches Python (each a device sync on an accelerator)
HOST_READS = ["item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__"]


@pytest.fixture
def host_reads(monkeypatch):
    """Count host reads made from code inside probes/ (the loop's own reads don't count)."""
    calls = []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            frame = sys._getframe(1)
            while frame is not None:
                if frame.f_code.co_filename.startswith(PROBES_DIR):
                    calls.append(_name)
                    break
                frame = frame.f_back
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return calls


def test_no_hooks_and_no_host_reads_between_logging_steps(host_reads, monkeypatch):
    transfers = []
    real_to_host = probes.monitor.to_host
    monkeypatch.setattr(probes.monitor, "to_host", lambda records: transfers.append(len(records)) or real_to_host(records))
    model = small_net()
    monitor = Monitor([ActivationStats(), GradientStats()], sink=MemorySink(), every=3).attach(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(0)
    reads_per_step, hooks_per_step, transfers_per_step = [], [], []
    for step in range(7):
        hooks_per_step.append(hook_count(model))
        before, sent = len(host_reads), len(transfers)
        x, y = torch.randn(16, 8, generator=gen), torch.randint(0, 3, (16,), generator=gen)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        monitor.step(loss)
        reads_per_step.append(len(host_reads) - before)
        transfers_per_step.append(len(transfers) - sent)
    monitor.detach()
    logging = [step % 3 == 0 for step in range(7)]
    assert [n > 0 for n in hooks_per_step] == logging  # hooks exist on logging steps only
    assert all(n == 0 for n, logs in zip(reads_per_step, logging) if not logs), reads_per_step
    assert all(n > 0 for n, logs in zip(reads_per_step, logging) if logs)  # the counter does count
    assert transfers_per_step == [1 if logs else 0 for logs in logging]
    assert hook_count(model) == 0


def test_a_logging_step_reads_back_only_in_its_one_transfer(host_reads, monkeypatch):
    """On an accelerator (simulated: no free host reads) the only read is to_host's."""
    monkeypatch.setattr(probes.stats, "host_reads_are_free", lambda device: False)
    model = small_net()
    monitor = Monitor([ActivationStats(), GradientStats()], sink=MemorySink(), every=1).attach(model)
    before = len(host_reads)
    model(torch.randn(4, 8)).sum().backward()
    monitor.step()
    monitor.detach()
    assert host_reads[before:] == ["tolist"]


PER_STEP = ["dead_units", "nonfinite", "activations", "gradients", "inputs", "outputs"]


def probe_calls_per_step(model, width, steps=6, every=100):
    """Python calls into probes/ on each step that does not log (the loop's own code and torch's
    not counted), for ``probes.watch(model, probes=PER_STEP)`` with the loss given each step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # the net stays as built: its cost is the question
    gen = torch.Generator().manual_seed(0)
    counts = []
    with probes.watch(model, probes=PER_STEP, every=every, optimizer=opt) as monitor:
        for step in range(steps):
            calls = [0]

            def profile(frame, event, arg):
                if event == "call" and frame.f_code.co_filename.startswith(PROBES_DIR):
                    calls[0] += 1

            x = torch.randn(64, width, generator=gen)
            sys.setprofile(profile)
            opt.zero_grad()
            loss = model(x).pow(2).mean()
            loss.backward()
            monitor.log_loss(loss)
            opt.step()
            sys.setprofile(None)
            counts.append(calls[0])
    return counts[2:]  # after step 0 (logs) and step 1 (closes what the log opened)


def relu_mlp(depth, width=32):
    """A ReLU net whose every unit fires in the first batch (identity weights, positive biases)."""
    torch.manual_seed(0)
    layers = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
        nn.init.eye_(layers[-2].weight)
        nn.init.constant_(layers[-2].bias, 0.5)
    return nn.Sequential(*layers, nn.Linear(width, 2))


def test_between_logs_the_per_step_cost_does_not_grow_with_the_model():
    """No Python call per layer or per parameter between logs: a 2-layer and a 24-layer ReLU net
    make the same few calls into the probes each step (a healthy net's ReLU hooks are gone once
    every unit has fired; the sentinel reads one loss)."""
    small, deep = probe_calls_per_step(relu_mlp(2), 32), probe_calls_per_step(relu_mlp(24), 32)
    assert small == deep and len(set(small)) == 1, (small, deep)
    assert small[0] <= 30, small  # the monitor, a model hook each for two probes, one optimizer hook


def test_on_an_accelerator_the_per_step_probes_read_nothing_back_between_logs(host_reads, monkeypatch):
    """Simulated accelerator (no free host reads): dead units and the sentinel read nothing between
    logs; a NaN loss at a step between logs is found at the next logging step, with its step."""
    for module in (probes.dead_units, probes.nonfinite):
        monkeypatch.setattr(module, "host_reads_are_free", lambda device: False)
    model = relu_mlp(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    reads, tripped = [], []
    with probes.watch(model, probes=["dead_units", "nonfinite"], every=4, optimizer=opt) as monitor:
        sentinel = monitor["nonfinite"]
        for step in range(9):
            before = len(host_reads)
            x = torch.randn(16, 32)
            if step == 5:
                x[0, 0] = float("nan")
            opt.zero_grad()
            loss = model(x).pow(2).mean()
            loss.backward()
            monitor.log_loss(loss)
            opt.step()
            reads.append(len(host_reads) - before)
            tripped.append(sentinel.event is not None)  # .event: no read (`tripped` would read)
    assert [n for step, n in enumerate(reads) if step % 4] == [0] * 6, reads
    assert reads[0] > 0 and reads[4] > 0  # the logging steps do read (the counter counts)
    assert tripped == [False] * 8 + [True]  # found at logging step 8...
    assert (sentinel.event.step, sentinel.event.where) == (5, "loss")  # ...as the loss of step 5
    # the ReLU hooks stayed for the whole interval (which units are left would be a read)
    assert all(len(model[i]._forward_hooks) == 0 for i in (1, 3))  # and detach removed them
