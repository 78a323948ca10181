"""InputStats, OutputStats and DeadUnits' recent window against statistics computed by hand."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from probes import DeadUnits, InputStats, MemorySink, Monitor, OutputStats


def test_input_stats_match_the_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    monitor = Monitor([InputStats()], sink=MemorySink(), every=2).attach(model)
    xs = [torch.rand(8, 3, 2, 2) * 255 for _ in range(4)]
    for x in xs:
        x[:, 0] = 7.0  # the four pixels of channel 0: features constant over every batch
        model(x).sum().backward()
        monitor.step()
    monitor.detach()
    s = monitor["inputs"].summary()
    logged = [xs[0], xs[2]]  # steps 0 and 2
    assert s["logs"] == 2 and s["steps"] == [0, 2] and s["shape"] == [8, 3, 2, 2]
    assert s["rms"] == pytest.approx(sum(float(x.square().mean().sqrt()) for x in logged) / 2, rel=1e-5)
    assert s["max_abs"] == pytest.approx(max(float(x.abs().max()) for x in logged))
    assert s["constant_fraction"] == pytest.approx(4 / 12)


def test_output_stats_tell_a_softmax_fed_to_cross_entropy_from_logits():
    def summary(model, loss_fn):
        torch.manual_seed(0)
        monitor = Monitor([OutputStats()], sink=MemorySink(), every=1).attach(model)
        for _ in range(3):
            x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
            loss_fn(model(x), y).backward()
            monitor.step()
        monitor.detach()
        return monitor["outputs"].summary()

    torch.manual_seed(0)
    logits = summary(nn.Sequential(nn.Linear(8, 4)), F.cross_entropy)
    assert logits["units"] == 4 and logits["probability_rows"] == 0 and logits["grad_logs"] == 3
    assert logits["grad_row_sum"] < 1e-5 and logits["logit_loss_fit"] > 0.9999
    softmax = summary(nn.Sequential(nn.Linear(8, 4), nn.Softmax(dim=1)), F.cross_entropy)
    assert softmax["probability_rows"] == 1 and softmax["unit_interval"] == 1
    assert softmax["grad_row_sum"] < 1e-5 and softmax["logit_loss_fit"] > 0.9999
    nll = summary(nn.Sequential(nn.Linear(8, 4), nn.LogSoftmax(dim=1)), F.nll_loss)
    assert nll["log_probability_rows"] == 1 and nll["grad_single_entry_rows"] == 1
    assert nll["grad_zero_fraction"] == pytest.approx(3 / 4)
    mse = summary(nn.Sequential(nn.Linear(8, 4), nn.Softmax(dim=1)),
                  lambda p, y: F.mse_loss(p, F.one_hot(y, 4).float()))
    assert mse["squared_error_fit"] > 0.9999 > mse["logit_loss_fit"]


def test_output_gradient_statistics_equal_autograd_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 5))
    monitor = Monitor([OutputStats()], sink=MemorySink(), every=1).attach(model)
    x, y = torch.randn(6, 8), torch.randint(0, 5, (6,))
    out = model(x)
    out.retain_grad()
    (F.cross_entropy(out, y) + 0.1 * out.sum()).backward()  # not shift-invariant: rows sum to 0.1/1 each
    monitor.step()
    monitor.detach()
    g = out.grad
    expected = float(g.sum(1).abs().sum() / g.abs().sum())
    assert monitor["outputs"].summary()["grad_row_sum"] == pytest.approx(expected, rel=1e-5)


def test_a_layer_killed_mid_training_is_dead_on_the_recent_window_with_the_step_it_died():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    probe = DeadUnits(recent_logs=3)
    monitor = Monitor([probe], sink=MemorySink(), every=5).attach(model)
    for step in range(50):
        if step == 22:
            with torch.no_grad():
                model[0].bias.fill_(-100.0)  # every unit negative for every input from step 22 on
        model(torch.randn(32, 4)).sum().backward()
        monitor.step()
    monitor.detach()
    layer = probe.summary()["layers"]["1"]
    assert layer["dead"] == 0  # each fired before step 22: not dead since attach
    assert layer["recent_dead"] == 6 and layer["recent_window"] == [35, 45, 3]
    # fired in the interval of steps 21-25 (step 21), silent on every training example from step 26
    assert {u[2] for u in layer["fired_then_silent"]} == {26}
    assert all(u[1] == 1.0 and u[3] == 6 for u in layer["fired_then_silent"])  # in all 6 intervals (to step 25)
