"""Every registered probe on models nobody here wrote: in-place ops, shared modules, odd
outputs, frozen and tied weights, eval/no_grad, dtype changes, attach/detach churn.

Parametrised over ``probes.PROBES`` so that a new probe is covered as soon as it is
registered. Each case trains a few steps with and without the probe and demands bitwise
equal outputs and weights, and no hook left behind.
"""
import gc
import tracemalloc
import weakref

import pytest
import torch
from torch import nn

import probes
from conftest import batches, fit, hook_count
from probes import MemorySink, Monitor

PROBE_NAMES = sorted(probes.PROBES)


class InplaceNet(nn.Module):
    """In-place ReLUs right after layers whose outputs the probes hook."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act1 = nn.Linear(6, 12), nn.ReLU(inplace=True)
        self.fc2, self.act2 = nn.Linear(12, 12), nn.ReLU(inplace=True)
        self.out = nn.Linear(12, 3)

    def forward(self, x):
        return self.out(self.act2(self.fc2(self.act1(self.fc1(x)))))


class SharedNet(nn.Module):
    """One block applied twice per forward, a parameter-free module, tied in/out weights."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(6, 6, bias=False)
        self.block = nn.Sequential(nn.Linear(6, 6), nn.Tanh())
        self.pool = nn.Identity()
        self.unembed = nn.Linear(6, 6, bias=False)
        self.unembed.weight = self.embed.weight  # tied
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = self.block(self.block(self.embed(x)))
        return self.head(self.unembed(self.pool(h)))


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        y = self.fc(x)
        return y, {"aux": y.detach() * 2}


class DictNet(nn.Module):
    """Submodules returning a tuple and a dict; the model returns a dict."""

    def __init__(self):
        super().__init__()
        self.first = TupleOut()
        self.rnn = nn.GRU(3, 4, batch_first=True)  # returns (output, h_n)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        y, _ = self.first(x)
        seq, _ = self.rnn(y.unsqueeze(1))
        return {"logits": self.head(seq[:, -1])}


class FrozenNet(nn.Module):
    """A frozen first layer (requires_grad=False), as in fine-tuning."""

    def __init__(self):
        super().__init__()
        self.frozen = nn.Linear(6, 8)
        self.frozen.requires_grad_(False)
        self.act = nn.Sigmoid()
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.act(self.frozen(x)))


MODELS = {"inplace": InplaceNet, "shared": SharedNet, "dict": DictNet, "frozen": FrozenNet}


def train(model, steps=4, monitor=None):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    return fit(model, batches(steps, 8, 6, seed=3), opt, monitor)


def fresh(kind):
    torch.manual_seed(0)
    return MODELS[kind]()


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("name", PROBE_NAMES)
def test_probe_changes_nothing_on_awkward_models(kind, name):
    reference_model = fresh(kind)
    reference = train(reference_model)
    model = fresh(kind)
    sink = MemorySink()
    with Monitor([probes.PROBES[name]()], sink=sink, every=1).attach(model) as monitor:
        outputs = train(model, monitor=monitor)
    assert hook_count(model) == 0
    for a, b in zip(reference, outputs):
        assert torch.equal(a, b)
    for a, b in zip(reference_model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


def eval_then_train(model, monitor=None, evaluate=True):
    """An evaluation pass (eval mode, no_grad) at step 0, then two training steps; the outputs of all three."""
    outputs = []
    if evaluate:
        model.eval()
        with torch.no_grad():
            outputs.append(model(torch.randn(4, 6, generator=torch.Generator().manual_seed(5))))
        model.train()
    if monitor is not None:
        monitor.step()
    return outputs + train(model, steps=2, monitor=monitor)


@pytest.mark.parametrize("name", PROBE_NAMES)
def test_eval_mode_and_no_grad_are_harmless(name):
    """Same outputs, bitwise, with the probe as without; and the evaluation pass is not counted
    (its examples are no training examples): the summary is what it is without that pass."""
    reference = eval_then_train(fresh("inplace"))  # no probe
    summaries = []
    for evaluate in (True, False):
        model = fresh("inplace")
        probe = probes.PROBES[name]()
        with Monitor([probe], sink=MemorySink(), every=1).attach(model) as monitor:
            outputs = eval_then_train(model, monitor, evaluate)
        assert hook_count(model) == 0
        expected = reference if evaluate else reference[1:]
        assert len(outputs) == len(expected) and all(torch.equal(a, b) for a, b in zip(expected, outputs))
        summaries.append(probe.summary())
    assert summaries[0] == summaries[1]
    if name == "dead_inputs":  # 2 training steps of 8 examples
        assert summaries[0]["examples"] == 16, summaries[0]
    if name == "dead_units":
        assert [layer["examples"] for layer in summaries[0]["layers"].values()] == [16, 16], summaries[0]


@pytest.mark.parametrize("name", PROBE_NAMES)
def test_model_moved_to_another_dtype_after_attach(name):
    model = fresh("shared")
    sink = MemorySink()
    with Monitor([probes.PROBES[name]()], sink=sink, every=1).attach(model) as monitor:
        train(model, steps=1, monitor=monitor)
        model.double()
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(8, 6, generator=gen, dtype=torch.float64)
        loss = model(x).pow(2).mean()
        loss.backward()
        monitor.step(loss)
    assert hook_count(model) == 0


def test_grad_probe_sees_gradient_before_an_inplace_relu():
    """The gradient at fc1's output (before its in-place ReLU) is what autograd gives."""
    model = fresh("inplace")
    sink = MemorySink()
    monitor = Monitor([probes.GradientStats()], sink=sink, every=1).attach(model)
    x = torch.randn(5, 6)
    captured = {}
    pre = model.fc1(x)
    pre.register_hook(lambda g: captured.setdefault("g", g.clone()))
    model.out(model.act2(model.fc2(model.act1(pre)))).sum().backward()
    model.zero_grad()
    model(x).sum().backward()
    monitor.step()
    monitor.detach()
    assert sink.scalars["output_grad_norm/fc1"][0][1] == pytest.approx(captured["g"].norm().item(), rel=1e-6)


def test_attach_detach_cycles_leave_no_hook_and_nothing_alive():
    """The fast counterpart of the next test: after a few cycles, once dropped, every monitor
    and probe is garbage (nothing on the model, nor anywhere else, still holds one)."""
    model = fresh("shared")
    x = torch.randn(4, 6)
    alive = []
    for _ in range(5):
        monitor = probes.watch(model, probes="all", every=1)
        model(x).sum().backward()
        monitor.step()
        monitor.detach()
        model.zero_grad(set_to_none=True)
        alive += [weakref.ref(monitor), *(weakref.ref(p) for p in monitor.probes)]
    del monitor
    gc.collect()
    assert hook_count(model) == 0
    assert [r() for r in alive if r() is not None] == []


@pytest.mark.slow  # tracemalloc over 1000 cycles: a minute on a busy machine
def test_attach_detach_a_thousand_times_leaves_nothing():
    model = fresh("shared")
    x = torch.randn(4, 6)

    def cycle():
        monitor = probes.watch(model, probes="all", every=1)
        model(x).sum().backward()
        monitor.step()
        monitor.detach()
        model.zero_grad(set_to_none=True)

    for _ in range(50):  # warm up caches before measuring
        cycle()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for _ in range(1000):
        cycle()
    gc.collect()
    growth = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert hook_count(model) == 0
    assert growth < 256 * 1024, f"memory grew by {growth} bytes over 1000 attach/detach cycles"
