"""The library used wrongly, or in the ways a user may try first: each mistake gets one clear
error and leaves nothing behind (no hook, no writer thread, no event file); the diagnosis
works whatever the sink; a pair scan of a model returning ``(logits, loss)`` says how to
pick the logits.
"""
from __future__ import annotations

import threading
from pathlib import Path
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import probes
from probes import MemorySink, pair_scan
from test_zoo import hooks_on, one_thread  # noqa: F401 (an autouse fixture)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 3))


def files_under(path: Path) -> list:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) if path.exists() else []


def train(model: nn.Module, optimizer, monitor: probes.Monitor, by_hand: bool = False, steps: int = 4,
          zero=()) -> torch.Tensor:
    """A plain loop: ``monitor.step(loss)`` after the optimizer step when ``by_hand``, else the
    monitor (given the optimizer) steps itself and gets ``log_loss``. Input features in
    ``zero`` are 0 in every example."""
    gen = torch.Generator().manual_seed(3)
    for _ in range(steps):
        x, y = torch.randn(8, 5, generator=gen), torch.randint(3, (8,), generator=gen)
        x[:, list(zero)] = 0
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if not by_hand:
            monitor.log_loss(loss)
        optimizer.step()
        if by_hand:
            monitor.step(loss)
    return loss.detach()


# -- F: watch() of something that is not a module ------------------------------------------

def not_modules():
    params = list(nn.Linear(3, 2).parameters())
    return {"a string": "model", "a list of parameters": params, "a function": lambda x: x}


@pytest.mark.parametrize("log_dir", [True, False], ids=["log_dir", "no-log_dir"])
@pytest.mark.parametrize("given", sorted(not_modules()))
def test_watch_of_what_is_not_a_module_is_a_type_error_that_leaves_nothing(given, log_dir, tmp_path):
    obj = not_modules()[given]
    run_dir = tmp_path / "run"
    threads = threading.active_count()
    with pytest.raises(TypeError) as info:
        probes.watch(obj, str(run_dir) if log_dir else None, every=1)
    message = str(info.value)
    assert "nn.Module" in message, message
    names = {type(obj).__name__, getattr(obj, "__name__", type(obj).__name__)}
    if isinstance(obj, str):
        names.add(repr(obj))
    if isinstance(obj, list):
        names.add("Parameter")
    assert any(n in message for n in names), f"the message does not say what was given: {message}"
    assert threading.active_count() == threads
    assert files_under(run_dir) == []
    if isinstance(obj, list):
        assert not [p for p in obj if getattr(p, "_post_accumulate_grad_hooks", None) or p._backward_hooks]


class AttachFailed(Exception):
    pass


class Broken(probes.Probe):
    """Registers hooks, then fails: what a probe with a bug in its attach looks like."""

    name = "broken"

    def _on_attach(self, model: nn.Module) -> None:
        self._forward_hook(model, lambda *args: None)
        self._grad_hook(next(model.parameters()), lambda param: None)
        raise AttachFailed("this probe cannot attach")


def test_a_failing_attach_reraises_and_leaves_no_writer_thread_hook_or_event_file(tmp_path):
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    threads = threading.active_count()
    for attempt in range(2):
        with pytest.raises(AttachFailed, match="cannot attach"):
            probes.watch(model, str(tmp_path / f"run{attempt}"), every=1, optimizer=optimizer,
                         probes=["dead_units", "nonfinite", "gradients", Broken(), "frozen", "activations"])
        assert hooks_on(model, optimizer) == {}, f"attempt {attempt}"
    assert threading.active_count() == threads, "a SummaryWriter thread outlived the failed watch()"
    assert files_under(tmp_path) == []


@pytest.mark.parametrize("with_loss", [True, False], ids=["step(loss)", "step()"])
def test_step_after_the_with_block_says_the_monitor_is_detached(with_loss, tmp_path):
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    threads = threading.active_count()
    with probes.watch(model, str(tmp_path / "run"), every=1) as monitor:
        loss = train(model, optimizer, monitor, by_hand=True, steps=2)
    files = files_under(tmp_path)
    assert files, "the run wrote an event file"
    with pytest.raises(probes.ProbeError, match="(?i)detached"):
        monitor.step(loss if with_loss else None)
    assert files_under(tmp_path) == files, "stepping a detached monitor wrote a new event file"
    assert threading.active_count() == threads
    assert hooks_on(model, optimizer) == {}


# -- F: pair_scan of a model returning (logits, loss) --------------------------------------

class LogitsAndLoss(nn.Module):
    """nanoGPT's convention: ``forward(x, targets=None) -> (logits, loss)``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.head = nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4)

    def forward(self, x, targets=None):
        logits = self.head(self.act(self.fc1(x)))
        return logits, (None if targets is None else F.cross_entropy(logits, targets))


class LogitsOnly(LogitsAndLoss):
    def forward(self, x):
        return super().forward(x)[0]


def per_example_crossentropy(logits, onehot):
    return F.cross_entropy(logits, onehot, reduction="none")


@pytest.mark.parametrize("rows", [1, 5])
def test_pair_scan_of_a_tuple_output_asks_for_output_fn(rows):
    torch.manual_seed(0)
    model = LogitsAndLoss()
    with pytest.raises((TypeError, probes.ProbeError), match="output_fn"):
        pair_scan(model, torch.randn(rows, 6), per_example_crossentropy)
    assert model.training
    assert hooks_on(model) == {}


def test_pair_scan_with_output_fn_equals_the_scan_of_the_logits_alone():
    torch.manual_seed(0)
    model = LogitsAndLoss()
    with torch.no_grad():
        model.head.weight.mul_(1000)  # so confident that some pairs' gradients are all zero in float32
    twin = LogitsOnly()
    twin.load_state_dict(model.state_dict())
    x = torch.randn(5, 6) * 3
    got = pair_scan(model, x, per_example_crossentropy, output_fn=lambda out: out[0], norms_for=3)
    want = pair_scan(twin, x, per_example_crossentropy, norms_for=3)
    assert model.training
    assert torch.equal(got.logits, want.logits)
    assert torch.allclose(got.logits, model.eval()(x)[0])
    assert want.all_zero.any() and (~want.all_zero).any(), "the check needs both kinds of pairs"
    assert torch.equal(got.all_zero, want.all_zero)
    assert torch.allclose(got.output_grad, want.output_grad)
    assert got.layer_norms.keys() == want.layer_norms.keys() == {"fc1", "head"}
    for layer, norms in want.layer_norms.items():
        assert torch.allclose(got.layer_norms[layer], norms, rtol=1e-5, atol=1e-8), layer


# -- G: the diagnosis whatever the sink ----------------------------------------------------

def monitor_with(sink_kind: str, model: nn.Module, optimizer, tmp_path: Path) -> probes.Monitor:
    if sink_kind == "log_dir":
        return probes.watch(model, str(tmp_path / "run"), every=2, optimizer=optimizer)
    if sink_kind == "memory":
        return probes.watch(model, sink=MemorySink(), every=2, optimizer=optimizer)
    if sink_kind == "null":
        return probes.watch(model, sink=probes.NullSink(), every=2, optimizer=optimizer)
    if sink_kind == "watch-default":
        return probes.watch(model, every=2, optimizer=optimizer)
    assert sink_kind == "monitor-without-sink"
    return probes.Monitor(probes.make_probes("all"), sink=None, every=2).attach(model, optimizer=optimizer)


@pytest.mark.parametrize("sink_kind", ["log_dir", "memory", "null", "watch-default", "monitor-without-sink"])
def test_diagnose_and_report_whatever_the_sink(sink_kind, tmp_path):
    """Feature 2 is zero in every example: its first-layer weights never move, which the
    diagnosis says (``frozen-by-dead-input``) from the probes' summaries, sink or not."""
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with monitor_with(sink_kind, model, optimizer, tmp_path) as monitor:
        train(model, optimizer, monitor, steps=6, zero=[2])
    findings = monitor.diagnose()
    assert isinstance(findings, list) and findings
    assert all(isinstance(f, probes.Finding) for f in findings), findings
    assert "frozen-by-dead-input" in {f.id for f in findings}
    text = monitor.report()
    assert isinstance(text, str) and text.strip()
    assert "{'" not in text and "':" not in text, text
    assert "frozen-by-dead-input" in text or next(f.message for f in findings if f.id == "frozen-by-dead-input") in text
