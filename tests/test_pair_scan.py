"""The pair scan's flags and norms against full per-pair gradients from plain autograd."""
import pytest
import torch
from torch import nn

import models
from models.losses import keras2_crossentropy, logits_crossentropy
from probes import pair_scan


def per_pair_gradients(model, x, loss_fn, n_classes=10):
    """The question's way: one forward+backward per (input, target) pair, inference mode."""
    model.eval()
    zero = torch.zeros(len(x), n_classes, dtype=torch.bool)
    norms = {}
    for i in range(len(x)):
        for c in range(n_classes):
            model.zero_grad()
            loss_fn(model(x[i:i + 1]), torch.eye(n_classes)[c:c + 1]).sum().backward()
            grads = [p.grad for p in model.parameters()]
            zero[i, c] = all(bool((g == 0).all()) for g in grads)
            for name, module in model.named_children():
                ps = [p.grad for p in module.parameters(recurse=True) if p.grad is not None]
                if ps:
                    norms.setdefault(name, torch.zeros(len(x), n_classes))[i, c] = torch.sqrt(sum((g ** 2).sum() for g in ps))
    model.train()
    return zero, norms


def confident_cnn():
    torch.manual_seed(0)
    model = models.build("cnn")
    with torch.no_grad():  # scale the last layer so that some probabilities fall below 1e-7
        model.fc2.weight.mul_(60)
    return model


def test_flags_from_output_gradient_equal_full_gradients():
    model = confident_cnn()
    torch.manual_seed(1)
    x = torch.rand(6, 1, 28, 28)
    result = pair_scan(model, x, keras2_crossentropy, norms_for=6)
    assert result.flags_from_output_grad  # the model ends in a Linear with bias
    zero, norms = per_pair_gradients(model, x, keras2_crossentropy)
    assert zero.any() and (~zero).any(), "the check needs both kinds of pairs"
    assert torch.equal(result.all_zero, zero)
    for layer, expected in norms.items():
        assert torch.allclose(result.layer_norms[layer], expected, rtol=1e-4, atol=1e-7), layer


def test_without_output_bias_falls_back_to_full_gradients():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10, bias=False))
    with torch.no_grad():
        model[3].weight.mul_(40)
    x = torch.rand(5, 1, 28, 28)
    x[0].zero_()  # a zero image: zero hidden input to the output layer, yet a non-zero output grad
    result = pair_scan(model, x, keras2_crossentropy)
    assert not result.flags_from_output_grad
    zero, _ = per_pair_gradients(model, x, keras2_crossentropy)
    assert torch.equal(result.all_zero, zero)


def test_scan_restores_training_mode_and_weights():
    model = confident_cnn()
    model.train()
    model.bn1.eval()  # a submodule with its own flag must keep it
    before = [p.clone() for p in model.parameters()]
    pair_scan(model, torch.rand(3, 1, 28, 28), logits_crossentropy, norms_for=2)
    assert model.training and model.fc1.training and not model.bn1.training
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("loss_fn", [keras2_crossentropy, logits_crossentropy])
def test_output_gradient_shape_and_logits(loss_fn):
    model = confident_cnn()
    x = torch.rand(4, 1, 28, 28)
    result = pair_scan(model, x, loss_fn)
    assert result.output_grad.shape == (4, 10, 10)
    assert result.pairs == 40
    model.eval()
    assert torch.allclose(result.logits, model(x), atol=1e-6)
