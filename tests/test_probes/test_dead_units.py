"""DeadUnits against a hand computation: units forced dead by a large negative bias."""
import pytest
import torch
from torch import nn

from probes import DeadUnits, suspended


def test_dead_units_are_exactly_those_never_positive():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        model[0].weight.abs_()  # every unit fires on positive inputs...
        model[0].bias[[1, 4]] = -100.0  # ...but these two, never on inputs in [0, 1)
    probe = DeadUnits().attach(model)
    xs = [torch.rand(8, 5) for _ in range(3)]
    for x in xs:
        model(x).sum().backward()
    with torch.no_grad():  # evaluation is not counted
        model(torch.full((4, 5), 1000.0))
    with suspended():
        model(torch.full((4, 5), 1000.0)).sum()
    probe.detach()
    by_hand = (torch.relu(model[0](torch.cat(xs))) != 0).any(0)
    layer = probe.summary()["layers"]["1"]
    assert layer["dead_units"] == torch.nonzero(~by_hand).flatten().tolist() == [1, 4]
    assert (layer["units"], layer["dead"], layer["examples"]) == (6, 2, 24)


def test_a_conv_channel_is_dead_only_if_zero_everywhere():
    conv = nn.Conv2d(1, 3, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.copy_(torch.tensor([-1.0, 1.0, 0.0]))
        conv.weight[2, 0, 1, 1] = 1.0  # channel 2 fires only where the pixel is positive
    model = nn.Sequential(conv, nn.ReLU(inplace=True))
    x = torch.zeros(2, 1, 4, 4)
    x[1, 0, 3, 3] = 0.5
    with DeadUnits().attach(model) as probe:
        model(x.requires_grad_())
    assert probe.summary()["layers"]["1"]["dead_units"] == [0]


def test_a_sequence_feature_is_its_last_dimension():
    """(batch, time, features): a feature is dead only if zero at every time step of every example."""
    lin = nn.Linear(2, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]))
        lin.bias.zero_()
    model = nn.Sequential(lin, nn.ReLU6())
    x = torch.zeros(2, 4, 2)
    x[1, 3, 1] = 1.0  # feature 2 fires once, at the last step of the second example
    with DeadUnits().attach(model) as probe:
        model(x.requires_grad_())
    assert probe.summary()["layers"]["1"]["dead_units"] == [0, 1]


def test_under_a_monitor_only_units_not_yet_fired_are_watched_and_late_firing_counts():
    """After the first step of an interval the hook looks only at units that have not fired in
    it (on a CPU, where knowing which is free); a unit that fires for the first time at a later,
    non-logging step still counts."""
    from probes import Monitor

    lin = nn.Linear(3, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(3))
        lin.bias.zero_()
    model = nn.Sequential(lin, nn.ReLU())
    probe = DeadUnits()
    inputs = [torch.tensor([[1.0, -1.0, -1.0]])] * 3 + [torch.tensor([[-1.0, 2.0, -1.0]])]  # unit 1 fires at step 3
    with Monitor([probe], every=100).attach(model) as monitor:
        for step, x in enumerate(inputs):
            model(x.requires_grad_()).sum().backward()
            monitor.step()
            if step == 1:  # step 0 logged and closed its interval: step 1 opened a new one
                assert probe._left["1"].tolist() == [1, 2]  # unit 0 fired: no longer read
    layer = probe.summary()["layers"]["1"]
    assert layer["dead_units"] == [2] and layer["examples"] == 4


def test_a_layer_whose_units_all_fired_loses_its_hook_until_the_next_logging_step():
    """Between logs a healthy network pays nothing: once every unit of a ReLU has fired in the
    interval its hook is removed, and the logging step that closes the interval puts it back."""
    from probes import Monitor

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    with torch.no_grad():
        model[2].bias[5] = -100.0  # unit 5 of the second ReLU never fires
    probe = DeadUnits()
    hooked, xs = [], [torch.randn(64, 4) for _ in range(9)]
    with Monitor([probe], every=4).attach(model) as monitor:
        for x in xs:
            model(x).sum().backward()
            monitor.step()
            hooked.append((len(model[1]._forward_hooks), len(model[3]._forward_hooks)))
    assert len(model[1]._forward_hooks) == len(model[3]._forward_hooks) == 0  # detach removed them all
    # after a logging step (0, 4, 8) both are watched again; in between only the layer with a silent unit
    assert hooked == [(1, 1), (0, 1), (0, 1), (0, 1), (1, 1), (0, 1), (0, 1), (0, 1), (1, 1)], hooked
    layers = probe.summary()["layers"]
    with torch.no_grad():  # no optimizer: the weights are those of every pass
        by_hand = (model[:4](torch.cat(xs)) > 0).any(0)
    assert layers["1"]["dead"] == 0 and 5 in layers["3"]["dead_units"]
    assert layers["3"]["dead_units"] == torch.nonzero(~by_hand).flatten().tolist()
    assert layers["1"]["examples"] == layers["3"]["examples"] == 9 * 64
    assert probe.logged_steps == [0, 4, 8] and probe.last_fired["3"][5] == -1 and probe.last_fired["1"].min() == 8


def test_the_first_example_is_read_first_and_the_rest_only_if_a_unit_is_left():
    """On a CPU a pass that reads a whole output (the first of an interval) looks at the first
    example first: a healthy layer costs 1/B of the read, and a unit that fires only in a later
    example still counts."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Reads(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.shapes = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.amax.default:
                self.shapes.append(tuple(args[0].shape))
            return func(*args, **(kwargs or {}))

    conv = nn.Conv2d(1, 3, 1)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        conv.bias.copy_(torch.tensor([0.0, 0.0, -5.0]))  # channel 2 fires only where a pixel is > 5
    model = nn.Sequential(conv, nn.ReLU())
    healthy, late = torch.rand(4, 1, 5, 5) + 6.0, torch.rand(4, 1, 5, 5)
    late[3, 0, 2, 2] = 9.0  # channel 2 fires only in the last example
    for x, dead, shapes in ((healthy, [], [(1, 3, 5, 5)]), (late, [], [(1, 3, 5, 5), (4, 3, 5, 5)])):
        with DeadUnits().attach(model) as probe, Reads() as reads:
            model(x.requires_grad_())
        assert probe.summary()["layers"]["1"]["dead_units"] == dead
        assert reads.shapes == shapes


# -- held outputs (probes.held): a layer with silent units keeps its outputs, read together later --

EVERY = 5


def relu_batches(steps=27, size=4):
    """Inputs of a bare ReLU layer of 6 units (unit u fires where x[:, u] > 0): unit 0 in every
    pass; unit 1 at steps 3, 12, 13; unit 2 at step 22; unit 3 a NaN at step 8 and fires at step
    9 (one interval: the NaN must not hide the firing); unit 5 a NaN and a positive entry in the
    same pass at step 17 (not a firing: that pass's largest entry is NaN) and fires at step 24;
    unit 4 never."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for step in range(steps):
        x = -torch.rand(size, 6, generator=gen)
        x[:, 0] = torch.rand(size, generator=gen) + 0.1
        for unit, steps_fired in ((1, (3, 12, 13)), (2, (22,)), (3, (9,)), (5, (24,))):
            if step in steps_fired:
                x[step % size, unit] = 1.0
        if step == 8:
            x[0, 3] = float("nan")
        if step == 17:
            x[1, 5], x[2, 5] = float("nan"), 2.0
        out.append(x)
    return out


def by_hand(data):
    """From the data: per pass, the units whose largest output is > 0; per logging step, the
    units fired in the interval it closes; the units fired at all."""
    fired = [torch.relu(x).amax(0) > 0 for x in data]
    logs = [s for s in range(len(data)) if s % EVERY == 0]
    last, count = torch.full((6,), -1), torch.zeros(6, dtype=torch.long)
    for before, step in zip([-1] + logs, logs):
        interval = torch.stack(fired[before + 1:step + 1]).any(0)
        last[interval] = step
        count += interval
    return torch.stack(fired).any(0), last, count


def dead_units_run(count, data, state=None, start=0, reads=()):
    from probes import Monitor

    model = nn.Sequential(nn.ReLU())
    probe = DeadUnits()
    seen = {}
    with Monitor([probe], every=EVERY).attach(model) as monitor:
        probe._held.count = count
        if state is not None:
            monitor.load_state_dict(state)
        for step in range(start, len(data)):
            model(data[step].clone().requires_grad_()).sum().backward()
            monitor.step()
            if step in reads:
                held = len(probe._held)
                seen[step] = (held, probe.summary(), monitor.state_dict(), len(probe._held))
    return probe, seen


@pytest.mark.parametrize("count", [64, 3])  # read at the logging steps and reads only / every 3 passes
def test_held_outputs_give_what_the_data_gives_per_interval_across_summaries_and_checkpoints(count):
    data = relu_batches()
    probe, seen = dead_units_run(count, data, reads=(13, 18, 23))
    for step, (held, summary, _, after) in seen.items():
        if count == 64:
            assert held > 0 and after == 0  # the read folded what was held
        ever, _, _ = by_hand(data[:step + 1])
        assert summary["layers"]["0"]["dead_units"] == torch.nonzero(~ever).flatten().tolist(), step
    assert seen[13][1]["layers"]["0"]["dead_units"] == [2, 4, 5] and seen[23][1]["layers"]["0"]["dead_units"] == [4, 5]
    ever, last, count_fired = by_hand(data)
    layer = probe.summary()["layers"]["0"]
    assert layer["dead_units"] == torch.nonzero(~ever).flatten().tolist() == [4]
    assert layer["examples"] == 4 * 27 and "unchecked_examples" not in layer
    assert probe.logged_steps == [0, 5, 10, 15, 20, 25]
    assert probe.last_fired["0"].tolist() == last.tolist() == [25, 15, 25, 10, -1, 25]
    assert probe.fired_intervals["0"].tolist() == count_fired.tolist()
    # a run resumed from the state_dict taken mid-interval at step 18 ends where this one does
    resumed, _ = dead_units_run(count, data, state=seen[18][2], start=19)
    assert resumed.summary() == probe.summary()
    assert torch.equal(resumed._interval["0"], probe._interval["0"])  # the open interval too


def test_a_held_output_written_in_place_before_it_is_read_is_counted_unchecked_not_read():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(3))
        model[0].bias.zero_()
    probe = DeadUnits().attach(model)
    model(torch.tensor([[1.0, -1.0, -1.0]]))  # the first pass is read at once: units 1 and 2 left
    out = model(torch.tensor([[1.0, -2.0, -2.0], [1.0, -3.0, -3.0]]))
    assert len(probe._held) == 1
    with torch.no_grad():
        out.add_(5.0)  # after its pass: every unit would look fired
    layer = probe.summary()["layers"]["1"]
    assert layer["dead_units"] == [1, 2] and layer["unchecked_examples"] == 2  # not [], as reading it would give
    assert probe.unchecked == {"1": 2} and probe._held.immediate
    model(torch.tensor([[-1.0, 1.0, -1.0]]))  # from then on read at once
    assert len(probe._held) == 0 and probe.summary()["layers"]["1"]["dead_units"] == [2]
    probe.detach()
