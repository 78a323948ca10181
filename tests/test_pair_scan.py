"""The pair scan's flags and norms against full per-pair gradients from plain autograd."""
import pytest
import torch
from torch import nn

import models
from models.losses import keras2_crossentropy, logits_crossentropy
from probes import pair_scan
from probes.pair_scan import DEFAULT_MEMORY_BUDGET, fast_layer_norms, output_gradients, per_pair_layer_norms


def per_pair_gradients(model, x, loss_fn, n_classes=10):
    """The question's way: one forward+backward per (input, target) pair, inference mode."""
    model.eval()
    zero = torch.zeros(len(x), n_classes, dtype=torch.bool)
    norms = {}
    for i in range(len(x)):
        for c in range(n_classes):
            model.zero_grad()
            loss_fn(model(x[i:i + 1]), torch.eye(n_classes)[c:c + 1]).sum().backward()
            grads = [p.grad for p in model.parameters() if p.requires_grad]
            zero[i, c] = all(g is None or bool((g == 0).all()) for g in grads)
            for name, module in model.named_modules():  # per module owning parameters, as the scan names them
                ps = [p.grad for p in module.parameters(recurse=False) if p.grad is not None]
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
    # the scan runs image by image: batch 1 and batch 4 differ by float rounding (~4e-6 on logits ~12)
    assert torch.allclose(result.logits, model(x), atol=1e-5)


# -- the closed-form norms against torch.func and plain autograd ---------------------------

class Gain(nn.Module):
    """A parametrised layer the closed forms do not know: the scan must fall back."""

    def __init__(self, n):
        super().__init__()
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, n))

    def forward(self, x):
        return x * self.gain


class Shapes(nn.Module):
    """Strided, dilated, padded and bias-free convolutions, BatchNorm 1d/2d, a Linear over a
    sequence (3-D input), a frozen weight and an in-place ReLU right after a convolution."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, dilation=2, padding="valid", bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.seq = nn.Linear(10, 5)  # over 8 channels x 10 rows of 10 columns
        self.bn2 = nn.BatchNorm1d(8 * 10 * 5)
        self.head = nn.Linear(8 * 10 * 5, 10)
        self.seq.bias.requires_grad_(False)

    def forward(self, x):
        h = self.relu(self.conv2(self.bn1(self.conv1(x))))  # (B, 8, 10, 10)
        h = self.seq(h.reshape(len(x), 8 * 10, 10))  # (B, 80, 5)
        return self.head(self.bn2(h.flatten(1)))


def with_running_stats(model):
    """Non-trivial BatchNorm statistics, so that the inference-mode affine map is tested."""
    torch.manual_seed(3)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(32, 1, 28, 28) * 2)
    return model.eval()


def scan_both_ways(model, x, loss_fn=keras2_crossentropy, budget=DEFAULT_MEMORY_BUDGET):
    model.eval()
    g = output_gradients(model(x).detach(), loss_fn, 10)
    fast = fast_layer_norms(model, x, g, budget)
    func = per_pair_layer_norms(model, x, g)
    return fast, func


@pytest.mark.parametrize("build", [confident_cnn, Shapes])
def test_closed_form_norms_equal_torch_func_norms(build):
    torch.manual_seed(0)
    model = with_running_stats(build())
    x = torch.rand(7, 1, 28, 28)
    (norms, nonzero), (expected, expected_nonzero) = scan_both_ways(model, x, budget=2_000_000)
    assert set(norms) == set(expected)
    for layer in expected:
        assert torch.allclose(norms[layer], expected[layer], rtol=1e-4, atol=1e-6), layer
        assert torch.equal(nonzero[layer], expected_nonzero[layer]), layer
    assert any(bool(v.any()) for v in nonzero.values())


def test_closed_form_norms_of_real_digits_equal_per_pair_autograd(mnist):
    model = with_running_stats(confident_cnn())
    x = mnist["test"].images[:4].unsqueeze(1).float() / 255
    result = pair_scan(model, x, keras2_crossentropy, norms_for=4)
    assert result.norms_method == "closed-form"
    zero, norms = per_pair_gradients(model, x, keras2_crossentropy)
    assert torch.equal(result.all_zero, zero)
    for layer, expected in norms.items():
        assert torch.allclose(result.layer_norms[layer], expected, rtol=1e-4, atol=1e-7), layer


@pytest.mark.parametrize("variant", ["unknown layer", "weight used outside its module", "layer used twice"])
def test_models_without_closed_forms_fall_back_to_torch_func(variant):
    torch.manual_seed(0)
    layers = [nn.Flatten(), nn.Linear(784, 16), nn.Tanh()]
    if variant == "unknown layer":
        model = nn.Sequential(*layers, Gain(16), nn.Linear(16, 10))
    elif variant == "weight used outside its module":
        class Tied(nn.Module):  # the output layer reuses the first layer's weight: invisible to hooks
            def __init__(self):
                super().__init__()
                self.body, self.out = nn.Sequential(*layers), nn.Linear(16, 10)

            def forward(self, x):
                h = self.body(x)
                return self.out(h) + (h @ self.body[1].weight[:, :10]) * 0.1

        model = Tied()
    else:
        block = nn.Sequential(nn.Linear(16, 16), nn.Tanh())
        model = nn.Sequential(*layers, block, block, nn.Linear(16, 10))
    x = torch.rand(3, 1, 28, 28)
    model.eval()
    g = output_gradients(model(x).detach(), keras2_crossentropy, 10)
    assert fast_layer_norms(model, x, g) is None
    result = pair_scan(model, x, keras2_crossentropy, norms_for=3)
    assert result.norms_method == "torch.func"
    _, norms = per_pair_gradients(model, x, keras2_crossentropy)
    # every layer, the tied one (body.1, whose weight the output also uses) and the shared block (3.0) too
    assert set(result.layer_norms) == set(norms) == {"unknown layer": {"1", "3", "4"},
                                                     "weight used outside its module": {"body.1", "out"},
                                                     "layer used twice": {"1", "3.0", "5"}}[variant]
    for layer, expected in norms.items():
        assert torch.allclose(result.layer_norms[layer], expected, rtol=1e-4, atol=1e-7), layer


def test_flags_without_output_bias_use_the_closed_forms_and_match_autograd():
    model = with_running_stats(Shapes())
    model.head.bias = None  # no bias on the output: flags need full gradients
    with torch.no_grad():
        model.head.weight.mul_(300)  # confident: some pairs clip to exactly zero
    x = torch.rand(5, 1, 28, 28)
    result = pair_scan(model, x, keras2_crossentropy)
    assert not result.flags_from_output_grad and result.norms_method == "closed-form"
    zero, _ = per_pair_gradients(model, x, keras2_crossentropy)
    assert zero.any() and (~zero).any()
    assert torch.equal(result.all_zero, zero)


def test_the_torch_func_fallback_leaves_the_models_parameters_in_place():
    """functional_call replaces the parameters of a module used twice with plain tensors; the
    scan puts them back, so an optimizer built before the scan still trains every block."""
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(16, 16), nn.Tanh())
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.Tanh(), block, block, nn.Linear(16, 10)).eval()
    before = dict(model.named_parameters())
    result = pair_scan(model, torch.rand(3, 1, 28, 28), keras2_crossentropy, norms_for=3)
    assert result.norms_method == "torch.func"
    after = dict(model.named_parameters())
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in before)
    assert all(isinstance(p, nn.Parameter) for p in after.values())
