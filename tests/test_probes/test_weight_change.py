"""WeightChange against mean |W_t - W_{t-1}| computed by hand around each optimizer step."""
import pytest
import torch
from torch import nn

from probes import MemorySink, Monitor, WeightChange


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.Sigmoid(), nn.Linear(12, 12), nn.Sigmoid(), nn.Linear(12, 3))


@pytest.mark.parametrize("every_step", [True, False])
def test_measured_steps_are_logged_with_their_own_step_and_match_hand_computation(every_step):
    """every_step: all 10 steps; by default the logging steps 0, 4, 8 only (the snapshot taken
    as each starts), with the run's mean over those."""
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9)
    sink = MemorySink()
    monitor = Monitor([WeightChange(every_step=every_step)], sink=sink, every=4).attach(model)
    gen = torch.Generator().manual_seed(3)
    expected = {name: [] for name in ("0.weight", "2.weight", "4.weight")}
    for _ in range(10):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(torch.randn(16, 6, generator=gen)),
                                           torch.randint(0, 3, (16,), generator=gen))
        loss.backward()
        opt.step()
        for name in expected:
            expected[name].append((dict(model.named_parameters())[name] - before[name]).abs().mean().item())
        monitor.step(loss)
    monitor.flush()  # steps 9 (after the last logging step 8) are flushed here
    monitor.detach()
    measured = list(range(10)) if every_step else [0, 4, 8]
    for name, values in expected.items():
        logged = sink.scalars[f"weight_change/{name}"]
        assert [s for s, _ in logged] == measured
        assert [v for _, v in logged] == pytest.approx([values[s] for s in measured], rel=1e-6)
    summary = monitor["weight_change"].summary()
    assert summary["layers"] == list(expected)  # biases are not weight matrices
    assert summary["steps"] == len(measured)
    assert summary["mean_abs_dw"] == pytest.approx(
        [sum(v[s] for s in measured) / len(measured) for v in expected.values()], rel=1e-6)
    assert "weight_change/0.bias" not in sink.scalars


def test_no_step_no_summary():
    probe = WeightChange().attach(net())
    assert probe.summary() == {}
    probe.detach()
