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


def mixed_net():
    """A ReLU, a ReLU6 and a user's own rectifier among layers whose exact zeros mean nothing."""
    class ClippedReLU(nn.Module):
        def forward(self, x):
            return x.clamp(0, 3)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 16), nn.ReLU6(), nn.LeakyReLU(), nn.Linear(16, 16), ClippedReLU(),
                          nn.Tanh(), nn.Linear(16, 3))
    # channels_last: the Flatten copies (a reshape of NHWC memory to NCHW order)
    return model.to(memory_format=torch.channels_last)


def one_logged_step(model, probe, x):
    sink = MemorySink()
    seen = {}
    handles = [m.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, o.detach().clone()))
               for n, m in model.named_children()]
    with Monitor([probe], sink=sink, every=1).attach(model) as monitor:
        out = model(x)
        out.retain_grad()
        out.clamp(-0.05, 0.05).sum().backward()  # the clip: exactly 0 gradient wherever |out| > 0.05
        monitor.step()
    for h in handles:
        h.remove()
    return sink, seen, out.grad


def test_activation_zero_fractions_only_where_a_zero_means_something():
    model, x = mixed_net(), torch.randn(32, 1, 8, 8).contiguous(memory_format=torch.channels_last)
    sink, seen, _ = one_logged_step(model, ActivationStats(), x)
    zero_tags = {t for t in sink.scalars if t.startswith("activation_zero_fraction/")}
    assert zero_tags == {"activation_zero_fraction/1", "activation_zero_fraction/6", "activation_zero_fraction/9"}
    for name in ("1", "6", "9"):
        assert sink.scalars[f"activation_zero_fraction/{name}"][0][1] == pytest.approx(
            (seen[name] == 0).float().mean().item())
    # every layer keeps its histogram; the flattened output's is its input's values, read once
    assert {t.split("/")[1] for t in sink.histograms} == set(seen)
    assert seen["3"].is_contiguous(memory_format=torch.channels_last) and not seen["3"].is_contiguous()
    flat, drop = sink.histograms["activations/4"][0][1], sink.histograms["activations/3"][0][1]
    assert (flat.min, flat.max, flat.num) == (float(seen["4"].min()), float(seen["4"].max()), seen["4"].numel())
    assert flat.sum == pytest.approx(float(seen["4"].double().sum()), rel=1e-5, abs=1e-4)
    assert flat.sum_squares == pytest.approx(float(seen["4"].double().square().sum()), rel=1e-5)
    assert (flat.min, flat.max, flat.sum, flat.bucket_counts) == (drop.min, drop.max, drop.sum, drop.bucket_counts)

    sink, _, _ = one_logged_step(mixed_net(), ActivationStats(zero_fractions="all"), x)
    assert {t.split("/")[1] for t in sink.scalars if t.startswith("activation_zero_fraction/")} == set(seen)
    with pytest.raises(ValueError, match="zero_fractions"):
        ActivationStats(zero_fractions="some")


def test_output_gradient_zero_fraction_at_the_model_output_only_unless_asked():
    model, x = mixed_net(), torch.randn(32, 1, 8, 8)
    sink, _, out_grad = one_logged_step(model, GradientStats(), x)
    zero_tags = {t for t in sink.scalars if t.startswith("output_grad_zero_fraction/")}
    assert zero_tags == {"output_grad_zero_fraction/11"}  # the last Linear's output is the model's
    expected = (out_grad == 0).float().mean().item()
    assert 0 < expected < 1
    assert sink.scalars["output_grad_zero_fraction/11"][0][1] == pytest.approx(expected)
    # every parameter gradient keeps its zero fraction, every layer its output-gradient norm
    assert {t.split("/")[1] for t in sink.scalars if t.startswith("grad_zero_fraction/")} == \
        {n for n, _ in model.named_parameters()}
    assert len([t for t in sink.scalars if t.startswith("output_grad_norm/")]) == 12

    sink, _, _ = one_logged_step(mixed_net(), GradientStats(layer_zero_fractions="all"), x)
    assert len([t for t in sink.scalars if t.startswith("output_grad_zero_fraction/")]) == 12
    with pytest.raises(ValueError, match="layer_zero_fractions"):
        GradientStats(layer_zero_fractions="inner")


def test_the_layer_before_a_flatten_gets_the_flattens_output_gradient_summary_without_a_pass(monkeypatch):
    """The cnn's flatten hands its gradient back channels_last, a copy: the same values as the
    flatten's output gradient, summarised just before, so the layer feeding it (drop1) gets that
    summary, not a pass of its own; the numbers are those of a direct computation."""
    import models
    from probes import stats

    sizes = []
    moments = stats._moments_in_pieces
    monkeypatch.setattr(stats, "_moments_in_pieces", lambda x, *a, **k: sizes.append(x.numel()) or moments(x, *a, **k))
    model = models.build("cnn")
    grads = {}
    for name in ("flatten", "drop1"):
        getattr(model, name).register_forward_hook(
            lambda m, i, o, name=name: o.register_hook(lambda g: grads.__setitem__(name, g.clone())) and None)
    sink, _, _ = one_logged_step(model, GradientStats(), torch.rand(8, 1, 28, 28))
    assert grads["drop1"].is_contiguous(memory_format=torch.channels_last)  # a copy, not a view
    assert torch.equal(grads["drop1"], grads["flatten"].reshape(8, 64, 12, 12))  # the same values
    norms = {t.split("/")[1]: v[0][1] for t, v in sink.scalars.items() if t.startswith("output_grad_norm/")}
    assert norms["drop1"] == norms["flatten"] == pytest.approx(grads["drop1"].norm().item(), rel=1e-6)
    assert sizes.count(8 * 64 * 12 * 12) == 2  # the flatten's and the pool's: none for drop1
    drop1, flatten = sink.histograms["output_grad/drop1"][0][1], sink.histograms["output_grad/flatten"][0][1]
    assert (drop1.min, drop1.max, drop1.num, drop1.sum) == (flatten.min, flatten.max, flatten.num, flatten.sum)
    assert drop1.max == grads["drop1"].max().item() and drop1.min == grads["drop1"].min().item()
