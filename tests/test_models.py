"""The ports against Keras fixtures and the originals' formulas: init, forward, gradients, optimizers, task."""
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from experiments.tasks import TASKS
from models.losses import keras2_crossentropy
from models.optimizers import ClassicMomentum, build_optimizer

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "keras"


def load_keras_dense_mlp():
    weights = np.load(FIXTURES / "weights_C.npz")
    model = models.build("dense-mlp")
    with torch.no_grad():
        for i, layer in enumerate((model.fc1, model.fc2, model.fc3)):
            layer.weight.copy_(torch.from_numpy(weights[f"w{2 * i}"]).T)  # Keras (in, out) -> torch (out, in)
            layer.bias.copy_(torch.from_numpy(weights[f"w{2 * i + 1}"]))
    return model.eval(), weights


@pytest.mark.skipif(not (FIXTURES / "grads_C.npz").exists(), reason="Keras fixtures not present")
def test_dense_mlp_computes_what_keras_computes_on_the_same_weights():
    model, weights = load_keras_dense_mlp()
    grads = np.load(FIXTURES / "grads_C.npz")
    x, y = torch.from_numpy(grads["x"]), torch.from_numpy(grads["y_onehot"])
    logits = model(x.reshape(-1, 1, 28, 28))
    assert torch.allclose(logits, torch.from_numpy(grads["logits"]), atol=1e-5)
    loss = keras2_crossentropy(logits, y)
    assert torch.allclose(loss, torch.from_numpy(grads["loss_clipped"]), atol=1e-5)
    loss.mean().backward()
    for i, layer in enumerate((model.fc1, model.fc2, model.fc3)):
        expected = torch.from_numpy(grads[f"gclipped{2 * i}"]).T
        assert torch.allclose(layer.weight.grad, expected, atol=1e-6, rtol=1e-4)
    # Keras' random_uniform init at [-0.05, 0.05] and zero biases, as ours
    assert np.abs(weights["w0"]).max() <= 0.05 and not weights["w1"].any()


def test_inits_are_the_originals():
    torch.manual_seed(0)
    dense = models.build("dense-mlp")
    assert dense.fc1.weight.abs().max() <= 0.05
    assert dense.fc1.weight.std().item() == pytest.approx(0.1 / 12**0.5, rel=0.02)  # U(-a, a): std = 2a / sqrt(12)
    deep = models.build("deep-sigmoid")
    first, last = deep.layers[0], deep.layers[6]
    assert first.weight.std().item() == pytest.approx(1 / 784**0.5, rel=0.02)  # N(0, 1) / sqrt(fan_in)
    assert last.weight.std().item() == pytest.approx(1 / 500**0.5, rel=0.05)
    assert not first.bias.any() and not last.bias.any()
    assert [type(m).__name__ for m in deep.layers] == ["Linear", "Sigmoid"] * 3 + ["Linear"]


def test_scaled_conv_variants_compute_the_same_function_at_init(mnist):
    torch.manual_seed(0)
    base = models.build("scaled-conv", variant=1)
    nets = [models.build("scaled-conv", variant=v).load_variant1_weights(base) for v in (1, 2, 3)]
    assert torch.equal(nets[1].conv2.weight, base.conv2.weight * 200)
    x, _ = TASKS["shifted-pixels"].batch(mnist["train"].images[:64], mnist["train"].labels[:64], torch.device("cpu"))
    with torch.no_grad():
        out = [torch.sigmoid(net(x)) for net in nets]
    assert (out[1] - out[0]).abs().max() < 1e-6 and (out[2] - out[0]).abs().max() < 1e-6


def test_shifted_pixel_task_is_the_binarised_image_one_pixel_to_the_right(mnist):
    images = mnist["train"].images[:16]
    x, target = TASKS["shifted-pixels"].batch(images, mnist["train"].labels[:16], torch.device("cpu"))
    assert x.shape == (16, 3, 28, 28) and target.shape == (16, 1, 28, 28)
    assert torch.equal(x[:, 0], x[:, 2]) and torch.equal(x[:, 0], images.float() / 255)
    assert torch.equal(target[:, 0, :, 1:], (images[:, :, :-1].float() / 255 > 0.5).float())
    assert not target[..., 0].any()


def test_classic_momentum_follows_torch_sgd_up_to_rounding():
    """v <- mu v - lr g; w <- w + v is torch's b <- mu b + g; w <- w - lr b with v = -lr b."""
    torch.manual_seed(0)
    a = torch.nn.Linear(5, 3)
    b = torch.nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    start = a.weight.detach().clone()
    ours = ClassicMomentum(a.parameters(), lr=0.01, momentum=0.99)
    theirs = torch.optim.SGD(b.parameters(), lr=0.01, momentum=0.99)
    gen = torch.Generator().manual_seed(1)
    for _ in range(50):
        x = torch.randn(8, 5, generator=gen)
        for net, opt in ((a, ours), (b, theirs)):
            opt.zero_grad()
            net(x).pow(2).mean().backward()
            opt.step()
    assert torch.allclose(a.weight, b.weight, atol=1e-6)
    assert (a.weight - start).abs().max() > 1e-3  # they moved, and moved together


def test_rmsprop_is_keras2_and_a_zero_gradient_leaves_a_weight_bitwise_unchanged():
    w = torch.nn.Parameter(torch.tensor([0.5, -0.25]))
    opt = build_optimizer("rmsprop", [w], lr=0.001)
    g = torch.tensor([0.2, 0.0])
    w.grad = g.clone()
    opt.step()
    a = 0.1 * g**2  # Keras 2: a = rho a + (1 - rho) g^2; p -= lr g / (sqrt(a) + eps), eps outside the sqrt
    expected = torch.tensor([0.5, -0.25]) - 0.001 * g / (a.sqrt() + 1e-7)
    assert torch.allclose(w.detach(), expected, rtol=1e-6)
    assert w[1].item() == -0.25



def test_cnn_runs_channels_last_and_computes_the_nchw_function():
    """The cnn's default layout is channels_last (speed, bench/: port_vs_plain_torch): same weights bit
    for bit as the NCHW build, the same outputs and gradients to float rounding, one state_dict for both."""
    torch.manual_seed(0)
    cl = models.build("cnn")
    torch.manual_seed(0)
    nchw = models.build("cnn", channels_last=False)
    assert cl.conv2.weight.is_contiguous(memory_format=torch.channels_last) and nchw.conv2.weight.is_contiguous()
    assert all(torch.equal(a, b) for a, b in zip(cl.state_dict().values(), nchw.state_dict().values()))
    x = torch.rand(8, 1, 28, 28)
    cl.eval(), nchw.eval()
    out_cl, out = cl(x), nchw(x)
    assert torch.allclose(out_cl, out, rtol=1e-5, atol=1e-5)
    out_cl.square().sum().backward()
    out.square().sum().backward()
    for (name, a), b in zip(cl.named_parameters(), nchw.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-5), name
    nchw.load_state_dict(cl.state_dict())  # and back: the layout stays each model's own
    assert nchw.conv2.weight.is_contiguous()


def test_keras_dropout_keeps_where_a_uniform_draw_is_at_least_the_rate():
    """Keras' rule (tf.nn.dropout: keep where uniform [0, 1) >= rate, scale by 1/(1-rate)), drawn
    from torch's global RNG in the input's memory order; eval, p=0 and p=1 as nn.Dropout."""
    from models.keras_layers import KerasDropout

    x = torch.randn(16, 8, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    drop = KerasDropout(0.3)
    torch.manual_seed(7)
    out = drop(x)
    torch.manual_seed(7)
    keep = torch.rand_like(x) >= 0.3
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, torch.where(keep, x * (1 / 0.7), torch.zeros(())))
    assert 0.6 < keep.float().mean().item() < 0.8
    out.sum().backward()
    assert torch.equal(x.grad, keep * (1 / 0.7))
    assert isinstance(drop, torch.nn.Dropout)
    drop.eval()
    assert drop(x) is x
    assert KerasDropout(0.0)(x) is x
    dropped = KerasDropout(1.0)(x)
    assert torch.equal(dropped, torch.zeros_like(x)) and dropped.requires_grad
    y = x.detach().clone()
    torch.manual_seed(7)
    assert KerasDropout(0.3, inplace=True)(y) is y and torch.equal(y, out.detach())
    half = torch.ones(200_000, dtype=torch.bfloat16)
    torch.manual_seed(7)
    kept = KerasDropout(0.2)(half)
    torch.manual_seed(7)
    assert kept.dtype == torch.bfloat16 and torch.equal(kept != 0, torch.rand(200_000) >= 0.2)  # float32 draws


def test_cnn_hands_the_max_pool_a_channels_last_gradient():
    """The flatten gives its gradient back in its input's layout (the max-pool's backward then takes
    its channels_last kernel, no copies): the same output and gradients as nn.Flatten."""
    torch.manual_seed(0)
    model = models.build("cnn")
    torch.manual_seed(0)
    plain = models.build("cnn")
    plain.flatten = torch.nn.Flatten()
    x = torch.rand(8, 1, 28, 28)
    layouts = []

    def watch_gradient(module, inputs, out):
        out.register_hook(lambda g: layouts.append(g.is_contiguous(memory_format=torch.channels_last)))

    model.pool.register_forward_hook(watch_gradient)
    for net in (model, plain):
        torch.manual_seed(1)  # the same dropout draws
        net(x).square().sum().backward()
    assert layouts == [True]
    for (name, a), b in zip(model.named_parameters(), plain.parameters()):
        assert torch.equal(a.grad, b.grad), name
    nchw = models.build("cnn", channels_last=False)
    assert type(nchw.flatten)(1, -1)(torch.ones(2, 3, 4, 4, requires_grad=True)).shape == (2, 48)
