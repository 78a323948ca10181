"""The sentinel names the first layer or parameter where a NaN/Inf appears, at the right step."""
import torch
from torch import nn

from probes import Monitor
from probes.nonfinite import NonFiniteSentinel


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def run(model, poison_step, poison):
    sentinel = NonFiniteSentinel()
    with Monitor([sentinel], every=100).attach(model) as monitor:
        for step in range(4):
            x = torch.randn(5, 4)
            if step == poison_step:
                poison(model, x)
            model.zero_grad()
            loss = model(x).pow(2).sum()
            sentinel.check_loss(loss)
            loss.backward()
            monitor.step(loss)
    return sentinel


def test_finite_run_trips_nothing():
    assert not run(net(), None, None).tripped


def test_nan_weight_in_second_layer_is_found_at_its_output():
    def poison(model, x):
        with torch.no_grad():
            model[2].weight[0, 0] = float("nan")

    sentinel = run(net(), 2, poison)
    assert (sentinel.event.step, sentinel.event.where, sentinel.event.name) == (2, "activation", "2")


def test_gradient_overflow_is_found_in_the_gradient():
    def poison(model, x):
        x.mul_(1e30)  # finite activations (~1e30), squared loss overflows to inf, so do the gradients

    sentinel = run(net(), 1, poison)
    assert sentinel.event.step == 1
    assert sentinel.event.where in ("loss", "gradient")
