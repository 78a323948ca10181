"""Each probe against an independent computation, and probes never change training."""
import copy
import importlib
import inspect
import pkgutil

import pytest
import torch
from torch import nn

import probes
from conftest import batches, fit, hook_count
from probes import (ActivationStats, DeadInputs, FrozenWeights, GradientStats, MemorySink, Monitor, ProbeError,
                    UpdateRatio, WeightChange)

PROBE_CLASSES = [ActivationStats, GradientStats, WeightChange, FrozenWeights, DeadInputs, UpdateRatio]


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.Sigmoid(), nn.Linear(16, 3))


def train(model, steps=5, monitor=None, seed=1):
    fit(model, batches(steps, 32, 8, seed=seed), torch.optim.SGD(model.parameters(), lr=0.5), monitor)
    return model


@pytest.mark.parametrize("probe_cls", PROBE_CLASSES)
def test_probe_leaves_training_bitwise_unchanged_and_detaches_cleanly(probe_cls):
    reference = train(small_net())
    model = small_net()
    sink = MemorySink()
    probe = probe_cls()
    with Monitor([probe], sink=sink, every=1).attach(model) as monitor:
        # every hook on the model is kept for removal (per-attach or, armed for a logging step, per-step)
        assert hook_count(model) == len(probe._handles) + len(probe._step_handles)
        train(model, monitor=monitor)
    assert hook_count(model) == 0
    for a, b in zip(reference.parameters(), model.parameters()):
        assert torch.equal(a, b)
    assert set(sink.scalars) - {"train/loss"} or sink.histograms or probe.summary()


def test_every_probe_defined_in_the_package_is_exported_and_registered():
    """Walks probes/'s modules, so that a new probe file is caught if ``__init__`` or ``PROBES``
    forgets it. A probe is a ``Probe`` subclass with a menu ``name`` of its own; a base that
    shares plumbing (``SnapshotProbe``) has none. probes.lightning is skipped where Lightning
    is not installed."""
    defined = set()
    for info in pkgutil.iter_modules(probes.__path__, "probes."):
        try:
            module = importlib.import_module(info.name)
        except ImportError:
            if info.name == "probes.lightning":
                continue
            raise
        defined |= {cls for _, cls in inspect.getmembers(module, inspect.isclass)
                    if issubclass(cls, probes.Probe) and cls is not probes.Probe and cls.__module__ == info.name
                    and "name" in vars(cls)}
    assert {ActivationStats, GradientStats, DeadInputs} <= defined  # the walk finds them
    for cls in defined:
        assert cls.__name__ in probes.__all__ and getattr(probes, cls.__name__) is cls, cls
        assert probes.PROBES.get(cls.name) is cls, cls
    assert defined == set(probes.PROBES.values())


def test_attaching_twice_says_so_and_detach_is_idempotent():
    probe = GradientStats()
    model = small_net()
    probe.attach(model)
    with pytest.raises(ProbeError, match="already attached"):
        probe.attach(model)
    probe.detach()
    probe.detach()
    assert hook_count(model) == 0


def test_gradient_zero_fraction_and_norm_match_autograd():
    model = small_net()
    sink = MemorySink()
    monitor = Monitor([GradientStats()], sink=sink, every=1).attach(model)
    x = torch.randn(4, 8)
    x[:, :3] = 0  # zero inputs -> zero gradient columns in the first layer
    loss = model(x).sum()
    loss.backward()
    expected_zero = (model[0].weight.grad == 0).float().mean().item()
    expected_norm = model[0].weight.grad.norm().item()
    monitor.step(loss)
    monitor.detach()
    assert sink.scalars["grad_zero_fraction/0.weight"][0][1] == pytest.approx(expected_zero)
    assert expected_zero >= 3 / 8
    assert sink.scalars["grad_norm/0.weight"][0][1] == pytest.approx(expected_norm, rel=1e-6)
    assert "output_grad_norm/2" in sink.scalars


def test_activation_zero_and_saturation_fractions_match_direct_computation():
    model = small_net()
    with torch.no_grad():
        model[2].weight.mul_(50)  # push the sigmoid into saturation
    sink = MemorySink()
    monitor = Monitor([ActivationStats()], sink=sink, every=1).attach(model)
    x = torch.randn(64, 8)
    h = model[1](model[0](x))
    s = model[3](model[2](h))
    model(x).sum().backward()
    monitor.step()
    monitor.detach()
    assert sink.scalars["activation_zero_fraction/1"][0][1] == pytest.approx((h == 0).float().mean().item())
    sat = ((s <= 1e-3) | (s >= 1 - 1e-3)).float().mean().item()
    assert sat > 0.3
    assert sink.scalars["activation_saturated_fraction/3"][0][1] == pytest.approx(sat)


def test_nothing_is_measured_between_logging_steps():
    model = small_net()
    sink = MemorySink()
    monitor = Monitor([GradientStats(), ActivationStats()], sink=sink, every=4).attach(model)
    train(model, steps=9, monitor=monitor)
    monitor.flush()
    monitor.detach()
    assert [s for s, _ in sink.scalars["grad_norm/0.weight"]] == [0, 4, 8]
    assert [s for s, _ in sink.scalars["train/loss"]] == list(range(9))  # losses kept for every step


def test_suspended_silences_hooks():
    model = small_net()
    sink = MemorySink()
    monitor = Monitor([ActivationStats()], sink=sink, every=1).attach(model)
    with probes.suspended():
        model(torch.randn(2, 8))
    monitor.step()
    monitor.detach()
    assert not sink.histograms


def test_prefixed_and_tee_sinks_fan_out_with_renamed_tags():
    from probes import Prefixed, Tee
    from probes.records import HostScalar

    plain, renamed = MemorySink(), MemorySink()
    sink = Tee(plain, Prefixed(renamed, "variant2/"))
    sink.write([HostScalar("train/loss", 3, 0.5)])
    sink.text("summary", "words", 3)
    sink.image("plot", b"png", 3)
    assert plain.scalars == {"train/loss": [(3, 0.5)]} and renamed.scalars == {"variant2/train/loss": [(3, 0.5)]}
    assert renamed.texts["variant2/summary"] == [(3, "words")] and renamed.images["variant2/plot"] == [(3, b"png")]
