"""probes.check: configuration faults from one pass of a batch, and nothing of the model changed."""
import argparse

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import probes
from probes.findings import report


def ids(findings):
    return sorted(f.id for f in findings)


def batch(n=16, features=8, classes=4, scale=1.0):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, features, generator=gen) * scale, torch.randint(0, classes, (n,), generator=gen)


def test_a_healthy_classifier_has_nothing_to_report():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    assert probes.check(model, nn.CrossEntropyLoss(), batch()) == []
    log_softmax = nn.Sequential(nn.Linear(8, 4), nn.LogSoftmax(dim=1))
    assert probes.check(log_softmax, F.nll_loss, batch()) == []


def test_softmax_before_cross_entropy_and_mse_on_softmax_are_improper_losses():
    model = nn.Sequential(nn.Linear(8, 4), nn.Softmax(dim=1))
    (f,) = probes.check(model, nn.CrossEntropyLoss(), batch())
    assert (f.id, f.severity) == ("improper-loss", "warning") and "expects logits" in f.message
    assert f.evidence["source"].startswith("probes.check")
    (m,) = probes.check(model, lambda p, y: F.mse_loss(p, F.one_hot(y, 4).float()), batch())
    assert m.id == "improper-loss" and "squared error" in m.message


def test_single_unit_softmax_names_its_layer_and_the_zero_gradient_follows():
    model = nn.Sequential(nn.Linear(8, 1), nn.Softmax(dim=1))
    x, y = batch(classes=2)
    findings = probes.check(model, nn.BCELoss(), (x, y.float().unsqueeze(1)))
    assert ids(findings) == ["improper-output-activation", "zero-gradient"]
    root = next(f for f in findings if f.id == "improper-output-activation")
    assert root.severity == "error" and root.evidence["layers"] == ["1"] and "softmax module: 1" in root.message
    assert [c.id for c in root.consequences] == ["zero-gradient"]
    assert report(findings).splitlines()[1].startswith("[error] improper-output-activation")


def test_raw_pixel_scale_inputs_and_a_log_of_a_relu_output():
    model = nn.Sequential(nn.Linear(8, 4))
    x, y = batch(scale=1.0)
    (f,) = probes.check(model, nn.CrossEntropyLoss(), (x.abs() * 120, y))
    assert f.id == "abnormal-input" and f.evidence["rms"] > 10
    relu_out = nn.Sequential(nn.Linear(8, 4), nn.ReLU())
    with torch.no_grad():
        relu_out[0].bias.fill_(-5.0)  # outputs exactly 0: log(0)
    findings = probes.check(relu_out, lambda out, y: -torch.log(out.gather(1, y[:, None])).mean(), batch())
    assert {"improper-output-activation", "non-finite"} <= set(ids(findings))
    nonfinite = next(f for f in findings if f.id == "non-finite")
    assert nonfinite.caused_by == "improper-output-activation" and nonfinite.evidence["where"] == "loss"


def test_check_changes_nothing_of_the_model_nor_what_the_probes_measure():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 4),
                          nn.Softmax(dim=1))
    model(batch()[0]).sum().backward()  # a gradient the user holds
    grads = [p.grad.clone() for p in model.parameters()]
    weights = [p.detach().clone() for p in model.parameters()]
    buffers = [b.clone() for b in model.buffers()]
    with probes.watch(model, every=1) as monitor:
        state, before = torch.get_rng_state(), monitor.summary()
        findings = monitor.check(nn.CrossEntropyLoss(), batch())
        assert torch.equal(torch.get_rng_state(), state)
        assert monitor.summary() == before and not monitor.kept  # the check's pass was not measured
    assert ids(findings) == ["improper-loss"] and monitor.checks == findings
    assert all(torch.equal(a, p) for a, p in zip(weights, model.parameters()))
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))
    assert "improper-loss" in [f.id for f in monitor.diagnose()]


def test_batch_must_be_inputs_and_targets():
    with pytest.raises(TypeError, match="batch=\\(inputs, targets\\)"):
        probes.check(nn.Linear(2, 2), nn.MSELoss(), torch.randn(3, 2))


def test_train_py_checks_before_training_and_keeps_the_findings_for_the_diagnosis(capsys):
    import train
    from experiments.findings import findings_for
    from experiments.mnist import Split
    from experiments.run import make_run
    from experiments.tasks import TASKS
    from models.losses import LOSSES

    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Softmax(dim=1))  # softmax before a logits loss
    args = argparse.Namespace(optimizer="sgd", lr=0.1, log_every=1)
    run = make_run("", model, args, probes.NullSink(), [])
    split = Split(torch.randint(0, 256, (8, 28, 28), dtype=torch.uint8), torch.arange(8) % 10)
    with run.monitor.attach(model):
        train.check_setup([run], TASKS["classify"], LOSSES["logits"]["categorical"], split, 8, torch.device("cpu"))
    assert "check (before training)" in capsys.readouterr().out
    assert "improper-loss" in [f.id for f in findings_for([run], {})]
