"""The sentinel names the first layer or parameter where a NaN/Inf appears, at the right step."""
import torch
from torch import nn

from conftest import hook_count
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


def test_nan_weight_in_second_layer_is_named_as_that_parameter():
    def poison(model, x):
        with torch.no_grad():
            model[2].weight[0, 0] = float("nan")

    sentinel = run(net(), 2, poison)
    assert (sentinel.event.step, sentinel.event.where, sentinel.event.name) == (2, "parameter", "2.weight")


def test_gradient_overflow_is_found_in_the_gradient():
    def poison(model, x):
        x.mul_(1e30)  # finite activations (~1e30), squared loss overflows to inf, so do the gradients

    sentinel = run(net(), 1, poison)
    assert sentinel.event.step == 1
    assert sentinel.event.where in ("loss", "gradient")


def bn_dropout_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2))


def test_finding_the_layer_changes_neither_the_random_stream_nor_the_running_statistics():
    """The sentinel runs the failing forward pass again to name the layer: that replay must leave
    BatchNorm's running statistics and the RNG (dropout masks) exactly as the training pass left them."""
    model = bn_dropout_net()
    sentinel = NonFiniteSentinel()
    with Monitor([sentinel], every=100).attach(model) as monitor:
        monitor.step(model(torch.randn(6, 4)).sum())  # step 0 logs (its hooks check every layer); step 1 does not
        assert not monitor.logging
        x = torch.randn(6, 4)
        x[2, :] = 1e3
        with torch.no_grad():
            model[0].weight.mul_(1e38)  # finite weights and inputs, Linear 0's output overflows to inf
        loss = model(x).pow(2).sum()
        buffers = [b.clone() for b in model.buffers()]
        rng = torch.get_rng_state()
        sentinel.check_loss(loss)
        assert (sentinel.event.step, sentinel.event.where, sentinel.event.name) == (1, "activation", "0")
        assert torch.equal(torch.get_rng_state(), rng)
        for a, b in zip(buffers, model.buffers()):  # the running mean is NaN by now: NaN == NaN here
            torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
        assert model[1].num_batches_tracked == 2


def test_an_inf_a_relu_hides_is_not_an_event():
    """-inf before a ReLU is 0 after it: loss and gradients stay finite and nothing downstream
    changed, so the sentinel, which looks at layer outputs only when the loss is not finite,
    reports nothing (what its docstring promises, on logging steps too)."""
    model = net()
    with torch.no_grad():
        model[0].bias[3] = -float("inf")
    sentinel = NonFiniteSentinel()
    with Monitor([sentinel], every=1).attach(model) as monitor:
        out = model(torch.randn(5, 4))
        loss = out.pow(2).sum()
        sentinel.check_loss(loss)
        loss.backward()
        monitor.step(loss)
    assert torch.isinf(model[0](torch.randn(1, 4))).any() and torch.isfinite(loss)
    assert all(p.grad.isfinite().all() for p in model.parameters() if p.grad is not None)
    assert not sentinel.tripped


def test_without_check_loss_nor_an_optimizer_the_poisoned_parameter_is_named():
    def poison(model, x):
        with torch.no_grad():
            model[2].weight[0, 0] = float("nan")

    model = net()
    sentinel = NonFiniteSentinel()
    with Monitor([sentinel], every=100).attach(model) as monitor:
        for step in range(4):
            if step == 2:
                poison(model, None)
            model.zero_grad()
            loss = model(torch.randn(5, 4)).pow(2).sum()
            loss.backward()
            monitor.step(loss)
    assert (sentinel.event.step, sentinel.event.where, sentinel.event.name) == (2, "parameter", "2.weight")


def test_through_the_optimizer_hook_a_layer_that_overflows_is_named_with_log_loss_only():
    """Finite weights and inputs; one layer's output overflows. The loss given by ``log_loss`` is
    checked in the optimizer's pre-step hook, where the weights are still those of the forward
    pass, so the replay names the layer at its own step."""
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sentinel = NonFiniteSentinel()
    with Monitor([sentinel], every=100).attach(model, optimizer=opt) as monitor:
        for step in range(3):
            x = torch.randn(5, 4)
            if step == 1:
                x *= 1e3
                with torch.no_grad():
                    model[2].weight.mul_(1e38)
            opt.zero_grad()
            loss = model(x).pow(2).sum()
            loss.backward()
            monitor.log_loss(loss)
            opt.step()
            if step == 1:
                assert sentinel.tripped  # at its own step: on a CPU the loss is read at once
    assert (sentinel.event.step, sentinel.event.where, sentinel.event.name) == (1, "activation", "2")


def test_a_non_finite_gradient_under_a_finite_loss_is_found_through_the_weights_it_spoils():
    """sqrt's derivative at 0: a finite loss (0) with non-finite gradients, and no loss handed over.
    Nothing is read per parameter: the update makes the weights NaN, and at the next step the
    model's output, checked before the optimizer step (a CPU: reading is free), names them."""
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sentinel = NonFiniteSentinel()
    with Monitor([sentinel], every=100).attach(model, optimizer=opt):
        for step in range(4):
            opt.zero_grad()
            out = model(torch.randn(5, 4))
            loss = (out * 0).sum().sqrt() if step == 1 else out.pow(2).sum()
            loss.backward()
            opt.step()
            assert sentinel.tripped == (step >= 2), step
    assert (sentinel.event.step, sentinel.event.where) == (2, "parameter")


def test_a_norm_that_overflows_is_not_a_non_finite_gradient():
    """The logging step's fused check uses gradient norms; a finite gradient whose norm
    overflows float32 is checked element-wise and not reported."""
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    sentinel = NonFiniteSentinel()
    with Monitor([sentinel], every=1).attach(model, optimizer=opt):
        opt.zero_grad()
        model(torch.randn(5, 4)).sum().backward()
        model[0].weight.grad.fill_(3e38)  # finite; its norm is inf in float32
        opt.step()
    assert torch.isinf(torch.linalg.vector_norm(model[0].weight.grad)) and not sentinel.tripped


def layer_hooks(model):
    """Hooks on the model's layers (its submodules), not on the model itself or its parameters."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules() if m is not model)


def test_probes_on_or_off_the_same_training():
    """Between logs the sentinel registers no layer hooks and only reads: same weights with or without it."""
    def train(with_sentinel):
        model = bn_dropout_net()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        torch.manual_seed(1)
        monitor = Monitor([NonFiniteSentinel()], every=3).attach(model) if with_sentinel else None
        hooks = [(hook_count(model), layer_hooks(model))]  # at attach, then in each step after backward
        for _ in range(5):
            opt.zero_grad()
            loss = model(torch.randn(6, 4)).pow(2).mean()
            if monitor:
                monitor["nonfinite"].check_loss(loss)
            loss.backward()
            hooks.append((hook_count(model), layer_hooks(model)))
            opt.step()
            if monitor:
                monitor.step(loss)
        if monitor:
            monitor.detach()
        return [t.clone() for t in model.state_dict().values()], hooks

    (weights, hooks), (plain, no_hooks) = train(True), train(False)
    assert all(torch.equal(a, b) for a, b in zip(weights, plain))
    assert no_hooks == [(0, 0)] * 6
    attached, steps = hooks[0], hooks[1:]
    between_logs = [h for step, h in enumerate(steps) if step % 3 != 0]  # steps 1, 2 and 4
    assert attached[0] > 0 and attached[1] == 0  # what it keeps: on the model and its parameters
    assert between_logs == [attached] * 3, hooks  # nothing added between logs, none on a layer
