"""UpdateRatio against ||grad||, ||W_t - W_{t-1}|| and their ratio computed by hand."""
import pytest
import torch
from torch import nn

from models.optimizers import KerasAdam
from probes import MemorySink, Monitor, UpdateRatio


@pytest.mark.parametrize("every_step", [True, False])
def test_logged_steps_and_run_means_match_hand_computation(every_step):
    """Logged at logging steps either way; the run's means over every step, or by default over
    the logging steps (the only ones measured)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 1, bias=False))
    opt = KerasAdam(model.parameters(), lr=1e-2)
    sink = MemorySink()
    monitor = Monitor([UpdateRatio(every_step=every_step)], sink=sink, every=3).attach(model)
    gen = torch.Generator().manual_seed(2)
    names = ["0.weight", "2.weight"]
    rows = []  # per step: {name: (grad, update, ratio)}
    for _ in range(7):
        params = dict(model.named_parameters())
        before = {n: params[n].detach().clone() for n in names}
        opt.zero_grad()
        loss = model(torch.randn(9, 5, generator=gen)).pow(2).mean()
        loss.backward()
        grads = {n: params[n].grad.norm().item() for n in names}
        opt.step()
        row = {}
        for n in names:
            update = (params[n].detach() - before[n]).norm().item()
            row[n] = (grads[n], update, update / before[n].norm().item())
        rows.append(row)
        monitor.step(loss)
    monitor.detach()
    for k, tag in enumerate(("update_grad_norm", "update_norm", "update_ratio")):
        for n in names:
            logged = sink.scalars[f"{tag}/{n}"]
            assert [s for s, _ in logged] == [0, 3, 6]
            assert [v for _, v in logged] == pytest.approx([rows[s][n][k] for s in (0, 3, 6)], rel=1e-5)
    summary = monitor["update_ratio"].summary()
    measured = [rows[s] for s in (range(7) if every_step else (0, 3, 6))]
    assert summary["layers"] == names and summary["steps"] == len(measured)
    for key, k in (("mean_grad_norm", 0), ("mean_update_norm", 1), ("mean_update_ratio", 2)):
        assert summary[key] == pytest.approx([sum(r[n][k] for r in measured) / len(measured) for n in names],
                                             rel=1e-5)
