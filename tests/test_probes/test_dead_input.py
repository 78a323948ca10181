"""DeadInputs against (X == 0).all(0) over every training example fed."""
import pytest
import torch
from torch import nn

import probes
from probes import DeadInputs, ProbeError


def test_always_zero_features_match_the_data_and_evaluation_is_not_counted():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 2))
    probe = DeadInputs().attach(model)
    seen = []
    for i in range(5):
        x = (torch.rand(8, 3, 4) > 0.85).float()  # sparse: some features zero throughout
        x[:, 0, 0] = 0
        seen.append(x.reshape(8, -1))
        model(x).sum().backward()
    with torch.no_grad():
        model(torch.ones(4, 3, 4))  # evaluation: not counted
    with probes.suspended():
        model(torch.ones(4, 3, 4))  # the library's own scans: not counted
    probe.detach()
    expected = torch.nonzero((torch.cat(seen) == 0).all(0)).flatten().tolist()
    assert 0 in expected and len(expected) < 12
    summary = probe.summary()
    assert summary["always_zero"] == expected
    assert summary == {"layer": "1", "features": 12, "examples": 40, "skipped": 0, "always_zero": expected,
                       "feature_kind": "input"}


def test_model_input_and_conv_features_are_everything_but_the_batch():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU())
    probe = DeadInputs(layer="").attach(model)
    x = torch.rand(4, 2, 5, 5)
    x[:, 1, 2, 3] = 0
    model(x)
    probe.detach()
    assert probe.summary()["always_zero"] == [1 * 25 + 2 * 5 + 3]


def test_unknown_layer_name_is_an_error():
    with pytest.raises(ProbeError, match="no submodule named"):
        DeadInputs(layer="nope").attach(nn.Linear(2, 2))


# -- held batches (probes.held): kept by reference on a CPU, folded together later -----------------

def late_batches(steps=60, size=8, seed=0):
    """(x, y) batches of 12 features: only feature 1 in the first ten; then 1, 3-6, 8 and 10
    at random; 2, 7 and 9 nonzero in one batch each, late (a tiny negative, a NaN); 0 and 11 never."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for step in range(steps):
        x = torch.zeros(size, 12)
        x[:, 1] = torch.randn(size, generator=gen)
        if step >= 10:
            for f in (3, 4, 5, 6, 8, 10):
                x[:, f] = torch.randn(size, generator=gen) * (torch.rand(size, generator=gen) > 0.5)
        if step == 31:
            x[5, 2] = 3.0
        if step == 44:
            x[0, 9] = float("nan")  # not 0: seen
        if step == 52:
            x[7, 7] = -1e-30
        out.append((x, torch.randint(0, 2, (size,), generator=gen)))
    return out


def always_zero(batches):
    """The features zero in every example of ``batches``, from the data."""
    return torch.nonzero((torch.cat([x for x, _ in batches]) == 0).all(0)).flatten().tolist()


def dead_inputs_run(count, data, state=None, start=0, stop=None, reads=()):
    """Train on data[start:stop] under a monitor logging every 7 steps; at the steps in ``reads``
    read the summary (asserting that passes were held until then) and keep it with a state_dict."""
    from probes import Monitor

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = DeadInputs()
    seen = {}
    with Monitor([probe], every=7).attach(model, optimizer=opt) as monitor:
        probe._held.count = count
        if state is not None:
            monitor.load_state_dict(state)
        for step in range(start, len(data) if stop is None else stop):
            x, y = data[step]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            if step in reads:
                held = len(probe._held)
                seen[step] = (held, probe.summary(), monitor.state_dict(), len(probe._held))
    return probe, seen


@pytest.mark.parametrize("count", [64, 3])  # folded at reads only / every 3 passes (whole, then by column)
def test_held_batches_give_what_the_data_gives_across_logs_summaries_and_checkpoints(count):
    data = late_batches()
    probe, seen = dead_inputs_run(count, data, reads=(1, 33, 47))
    for step, (held, summary, _, after) in seen.items():
        if count == 64 or step == 1:
            assert held > 0 and after == 0  # the read folded what was held
        assert summary["always_zero"] == always_zero(data[:step + 1]), step
        assert (summary["examples"], summary["skipped"]) == (8 * (step + 1), 0)
    assert seen[33][1]["always_zero"] == [0, 7, 9, 11] and seen[47][1]["always_zero"] == [0, 7, 11]
    final = probe.summary()
    assert final["always_zero"] == always_zero(data) == [0, 11]
    assert (final["examples"], final["skipped"]) == (8 * 60, 0)
    # a run resumed from the state_dict taken mid-interval at step 47 ends where this one does
    resumed, _ = dead_inputs_run(count, data, state=seen[47][2], start=48)
    assert resumed.summary() == final
    for (x, _), (fed, _) in zip(late_batches(), data):  # the probe never wrote into what it held
        assert torch.allclose(x, fed, rtol=0, atol=0, equal_nan=True)


def test_a_held_batch_written_in_place_before_its_fold_is_skipped_not_folded():
    model = nn.Sequential(nn.Linear(6, 3))
    probe = DeadInputs().attach(model)
    first, second, third = torch.zeros(4, 6), torch.zeros(4, 6), torch.zeros(4, 6)
    first[:, 0], second[:, 1], third[:, 2] = 1.0, 1.0, 1.0
    model(first)  # the first pass is folded at once (it makes the running maximum)
    model(second)
    assert len(probe._held) == 1
    second[:, 5] = 1.0  # after its pass: feature 5 was never fed, feature 1 was but is gone
    model(third)
    summary = probe.summary()
    assert summary["always_zero"] == [1, 3, 4, 5]  # not [3, 4], as folding the changed batch would give
    assert (summary["examples"], summary["skipped"]) == (8, 4)
    assert probe._held.immediate  # from then on every pass is folded at once
    model(second)
    assert len(probe._held) == 0 and probe.summary()["always_zero"] == [3, 4]
    probe.detach()


def test_a_reused_input_buffer_costs_one_batch_then_every_pass_is_folded_at_once():
    model = nn.Sequential(nn.Linear(5, 2))
    probe = DeadInputs().attach(model)
    buffer = torch.zeros(3, 5)
    fed = []
    for i in range(6):
        batch = torch.zeros(3, 5)
        batch[:, i % 5] = 1.0 if i != 2 else 0.0
        buffer.copy_(batch)  # the loop writes each batch into the same tensor
        model(buffer)
        fed.append(batch)
    probe.detach()
    summary = probe.summary()
    # the second pass's batch was held, and overwritten by the third before it was read
    assert (summary["examples"], summary["skipped"]) == (15, 3)
    assert summary["always_zero"] == always_zero([(b, None) for i, b in enumerate(fed) if i != 1]) == [1, 2]


def test_held_token_ids_give_the_tokens_fed():
    model = nn.Sequential(nn.Embedding(50, 4), nn.Flatten(), nn.Linear(12, 2))
    probe = DeadInputs().attach(model)
    gen = torch.Generator().manual_seed(0)
    fed = []
    for step in range(20):
        ids = torch.randint(0, 40, (2, 3), generator=gen)
        fed.append(ids)
        model(ids).sum().backward()
        if step == 9:
            assert len(probe._held) == 9
            assert probe.summary()["always_zero"] == sorted(set(range(50)) - set(torch.cat(fed).flatten().tolist()))
    probe.detach()
    summary = probe.summary()
    assert summary["always_zero"] == sorted(set(range(50)) - set(torch.cat(fed).flatten().tolist()))
    assert summary["examples"] == 40 and summary["feature_kind"] == "token"


def test_a_held_pass_makes_no_tensor_op():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 3), nn.ReLU())
    x = torch.rand(4, 6)
    with Ops() as bare:
        model(x)
    probe = DeadInputs().attach(model)
    model(x)  # the first pass: folded at once
    with Ops() as probed:
        model(x)
    assert len(probe._held) == 1 and probed.ops == bare.ops
    probe.detach()


def test_what_would_keep_much_memory_alive_is_folded_at_once():
    """A batch over Held.SMALL bytes, or a small view of a large tensor (holding it would keep
    the large one alive), is folded in its pass."""
    model = nn.Sequential(nn.Linear(6, 2))
    probe = DeadInputs().attach(model)
    model(torch.ones(4, 6))
    model(torch.zeros(20_000, 6))  # 480 kB
    large = torch.zeros(20_000, 6)
    large[5, 3] = 1.0
    model(large[:8])
    assert len(probe._held) == 0 and probe.summary()["examples"] == 20_012
    model(torch.zeros(8, 6))
    assert len(probe._held) == 1
    probe.detach()
