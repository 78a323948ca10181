"""FrozenWeights against W_final == W_0 compared bitwise by hand, and its first-layer inputs."""
import torch
from torch import nn

from conftest import batches, fit
from probes import FrozenWeights, Monitor


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))


def train(model, monitor, dead=(2, 7), steps=6):
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.9, eps=1e-7)
    fit(model, batches(steps, 32, 10, seed=1, zero=dead), opt, monitor)


def test_masks_match_bitwise_comparison_and_zero_inputs_are_the_frozen_columns():
    model = net()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    monitor = Monitor([FrozenWeights()], every=100).attach(model)
    train(model, monitor)
    monitor.detach()
    probe = monitor["frozen"]
    for name, param in model.named_parameters():
        by_hand = param.detach().view(torch.int32) != initial[name].view(torch.int32)
        assert torch.equal(probe.changed[name], by_hand), name
    frozen_cols = [i for i in range(10) if (model[1].weight[:, i] == initial["1.weight"][:, i]).all()]
    assert frozen_cols == [2, 7]
    summary = probe.summary()
    assert summary["first_layer"] == "1.weight" and summary["first_layer_inputs"] == 10
    assert summary["frozen_first_layer_inputs"] == [2, 7]
    assert summary["parameters"]["1.weight"]["never_changed"] == 2 * 8
    assert summary["parameters"]["1.bias"]["changed"] == 8


def test_a_weight_that_moves_and_comes_back_counts_as_changed_and_signed_zero_is_a_change():
    model = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    probe = FrozenWeights(every_step=True).attach(model)
    with torch.no_grad():
        model.weight[0, 0] = 1.0
    probe.end_step(0)
    with torch.no_grad():
        model.weight[0, 0] = 0.0  # back where it started
        model.weight[1, 2] = -0.0  # equal as a float, different bits
    probe.end_step(1)
    probe.detach()
    assert probe.changed["weight"].tolist() == [[True, False, False], [False, False, True]]
    assert probe.summary()["frozen_first_layer_inputs"] == [1]


def test_conv_first_layer_reports_input_channels():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 1, 3, padding=1))
    probe = FrozenWeights().attach(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(2, 3, 5, 5)
    x[:, 1] = 0  # channel 1 is dead everywhere
    model(x).pow(2).mean().backward()
    opt.step()
    probe.end_step(0)
    probe.detach()
    assert probe.summary()["frozen_first_layer_inputs"] == [1]


def test_by_default_weights_are_compared_at_logging_steps_and_at_the_end():
    """Between logs nothing is compared (no cost); a move seen at a logging step, or still there
    when the summary is read, counts; one undone between two logging steps is not seen."""
    model = nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    probe = FrozenWeights().attach(model)
    moves = {1: (0, 0, 1.0), 2: (0, 0, 0.0), 3: (1, 1, 2.0)}  # step -> (row, col, value) set during it
    for step in range(5):
        probe.start_step(step, logging=step in (0, 3))
        if step in moves:
            r, c, v = moves[step]
            with torch.no_grad():
                model.weight[r, c] = v
        probe.end_step(step)
        if step == 3:
            assert probe.changed["weight"].tolist() == [[False, False, False], [False, True, False]]
    with torch.no_grad():
        model.weight[1, 0] = 3.0  # after the last logging step: seen when the summary is read
    assert probe.summary()["parameters"]["weight"]["changed"] == 2
    assert probe.frozen_input_features().tolist() == [2]
