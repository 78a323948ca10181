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
