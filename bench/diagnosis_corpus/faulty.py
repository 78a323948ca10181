"""Faulty setups, one or more per fault, each written from the fault's definition.

A fault is named by the finding id the diagnosis must give it (probes/diagnosis.py lists the
ids). Sizes are kept small: each trial is seconds on a CPU.
"""
from __future__ import annotations

import math
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from experiments.zero_grad_scan import scan_zero_gradients
from models.losses import keras2_crossentropy

from . import data
from .nets import MySigmoid, Scaled, mlp
from .setups import Setup, Trial, set_lr

CE = nn.CrossEntropyLoss()


def _init_normal(model: nn.Module, gain: float) -> None:
    """Every linear weight N(0, gain^2 / fan_in), biases 0."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0, gain / math.sqrt(m.in_features))
                m.bias.zero_()


def vanishing_sigmoid(seed: int) -> Trial:
    """Eight sigmoid layers: each multiplies the gradient by at most 0.25 on its way back."""
    model = mlp([784] + [128] * 7 + [10], nn.Sigmoid)
    return Trial(model, torch.optim.SGD(model.parameters(), lr=0.1), CE, data.mnist_batches(seed, 150, 64), 10)


def exploding_init(seed: int) -> Trial:
    """Nine ReLU layers initialised 3x too large: the gradient grows ~4.5x per layer going back."""
    model = mlp([32] + [128] * 8 + [10])
    _init_normal(model, 3 * math.sqrt(2))
    return Trial(model, torch.optim.SGD(model.parameters(), lr=1e-4), CE, data.clusters(seed, 100, 64), 10)


def dead_relu_bias(seed: int) -> Trial:
    """A hidden layer whose bias starts at -10: its ReLUs are 0 for every example from step 0."""
    model = mlp([784, 256, 128, 10])
    with torch.no_grad():
        model[3].bias.fill_(-10.0)
    return Trial(model, torch.optim.SGD(model.parameters(), lr=0.05), CE, data.mnist_batches(seed, 120, 64), 10)


def dying_relu(seed: int) -> Trial:
    """Trains well under Adam, then five steps at 300x the learning rate (a warm-up to the wrong
    peak) push half the second layer's units negative for every input: they die mid-run."""
    model = mlp([32, 128, 128, 10], flatten=False)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def schedule(step: int) -> None:
        set_lr(opt, 0.3 if 79 <= step < 84 else 1e-3)

    return Trial(model, opt, CE, data.clusters(seed, 200, 64), 10, after_step=schedule)


def saturated_tanh(seed: int) -> Trial:
    """Tanh layers initialised 10x too large: most outputs sit at +-1, where tanh' is ~0."""
    model = mlp([32, 128, 128, 128, 10], nn.Tanh, flatten=False)
    _init_normal(model, 10.0)
    return Trial(model, torch.optim.SGD(model.parameters(), lr=0.01), CE, data.clusters(seed, 120, 64), 10)


def saturated_custom_sigmoid(seed: int) -> Trial:
    """The user's own sigmoid module, weights 20x too large: saturated like torch's."""
    model = mlp([32, 128, 128, 10], MySigmoid, flatten=False)
    _init_normal(model, 20.0)
    return Trial(model, torch.optim.SGD(model.parameters(), lr=0.01), CE, data.clusters(seed, 120, 64), 10)


def unstable_high_lr(seed: int) -> Trial:
    """Adam at 100x its usual learning rate: steps too large for the loss's curvature."""
    model = mlp([784, 256, 128, 10])
    return Trial(model, torch.optim.Adam(model.parameters(), lr=0.1), CE, data.mnist_batches(seed, 150, 64), 10)


def unstable_sgd_momentum(seed: int) -> Trial:
    """SGD with momentum 0.9 at lr 0.3, three times what this MLP tolerates: the loss climbs to
    several times its starting value before the network settles, dead, at chance."""
    model = mlp([784, 256, 128, 10])
    return Trial(model, torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9), CE,
                 data.mnist_batches(seed, 150, 64), 10)


def stuck_tiny_lr(seed: int) -> Trial:
    """A learning rate of 1e-6 for SGD: the loss stays at chance, ln(10)."""
    model = mlp([784, 256, 128, 10])
    return Trial(model, torch.optim.SGD(model.parameters(), lr=1e-6), CE, data.mnist_batches(seed, 150, 64), 10)


def non_finite_overflow(seed: int) -> Trial:
    """SGD at a learning rate of 50: the weights overflow to Inf within a few steps, then NaN."""
    model = mlp([784, 256, 128, 10])
    return Trial(model, torch.optim.SGD(model.parameters(), lr=50.0), CE, data.mnist_batches(seed, 60, 64), 10)


def raw_pixels(seed: int) -> Trial:
    """MNIST fed as raw 0-255 bytes (no x / 255, no normalisation)."""
    model = mlp([784, 256, 128, 10])
    return Trial(model, torch.optim.Adam(model.parameters(), lr=1e-3), CE,
                 data.mnist_batches(seed, 120, 64, scale="raw"), 10)


def constant_features(seed: int) -> Trial:
    """Tabular data where 62 of 64 columns were imputed to one constant: 2 features vary."""
    batches = []
    for x, y in data.clusters(seed, 150, 64, features=2, classes=4, spread=0.5):
        batches.append((torch.cat([x, torch.full((x.shape[0], 62), 0.5)], 1), y))
    model = mlp([64, 64, 64, 4], flatten=False)
    return Trial(model, torch.optim.Adam(model.parameters(), lr=1e-3), CE, batches, 10)


def single_unit_softmax(seed: int) -> Trial:
    """Binary classification with one output unit under softmax: the output is always 1."""
    model = mlp([32, 64, 1], out=nn.Softmax(dim=1), flatten=False)
    batches = [(x, (y % 2).float().unsqueeze(1)) for x, y in data.clusters(seed, 100, 64, classes=2)]
    return Trial(model, torch.optim.Adam(model.parameters(), lr=1e-3), nn.BCELoss(), batches, 10)


def nll_on_linear(seed: int) -> Trial:
    """nll_loss on raw logits (no log_softmax): a loss with no lower bound."""
    model = mlp([784, 256, 10])
    return Trial(model, torch.optim.SGD(model.parameters(), lr=0.01), F.nll_loss, data.mnist_batches(seed, 100, 64),
                 10)


def log_loss_on_relu(seed: int) -> Trial:
    """A ReLU output read as a probability by -log p[target]: log(0) is -inf."""
    model = mlp([32, 64, 10], out=nn.ReLU(), flatten=False)

    def log_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -torch.log(out.gather(1, y.unsqueeze(1))).mean()

    return Trial(model, torch.optim.SGD(model.parameters(), lr=0.01), log_loss, data.clusters(seed, 100, 64), 10)


def softmax_into_cross_entropy(seed: int) -> Trial:
    """nn.Softmax at the end of the model, then nn.CrossEntropyLoss, which applies its own."""
    model = mlp([784, 256, 10], out=nn.Softmax(dim=1))
    return Trial(model, torch.optim.Adam(model.parameters(), lr=1e-3), CE, data.mnist_batches(seed, 120, 64), 10)


def mse_on_softmax(seed: int) -> Trial:
    """Mean squared error between softmax probabilities and one-hot targets."""
    model = mlp([784, 256, 10], out=nn.Softmax(dim=1))

    def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out, F.one_hot(y, 10).float())

    return Trial(model, torch.optim.SGD(model.parameters(), lr=0.5), mse, data.mnist_batches(seed, 120, 64), 10)


def clipped_loss(seed: int) -> Trial:
    """Keras 2's cross-entropy (probabilities clipped to [1e-7, 1 - 1e-7]) trained to confidence:
    the most confident pairs get an exactly-zero gradient."""
    model = mlp([32, 10], flatten=False)
    batches = data.clusters(seed, 200, 64, spread=0.15)
    held_out = torch.cat([x for x, _ in data.clusters(seed + 7, 4, 50, spread=0.15)])

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return keras2_crossentropy(out, F.one_hot(y, 10).float()).mean()

    def scan(m: nn.Module):
        return scan_zero_gradients(m, held_out, keras2_crossentropy)["facts"]

    return Trial(model, torch.optim.SGD(model.parameters(), lr=10.0), loss_fn, batches, 10, scan=scan)


def frozen_dead_input(seed: int) -> Trial:
    """MNIST scaled to [0, 1]: the border pixels are 0 in every image, so their weights never move."""
    model = mlp([784, 128, 10])
    return Trial(model, torch.optim.Adam(model.parameters(), lr=1e-3), CE,
                 data.mnist_batches(seed, 80, 64, scale="unit"), 10)


def update_ratio_imbalance(seed: int) -> Trial:
    """One layer's weights 100x larger (its output divided back): under Adam it learns 100x slower."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), Scaled(128, 128, 100.0), nn.ReLU(),
                          nn.Linear(128, 10))
    return Trial(model, torch.optim.Adam(model.parameters(), lr=1e-3), CE, data.mnist_batches(seed, 80, 64), 10)


FAULTY: List[Setup] = [
    Setup("vanishing-sigmoid", vanishing_sigmoid, "vanishing-gradient", "gradient shrinks through 8 sigmoids"),
    Setup("exploding-init", exploding_init, "exploding-gradient", "weights initialised too large, 9 ReLU layers"),
    Setup("dead-relu-bias", dead_relu_bias, "dead-relu", "a layer dead on every example from the start"),
    Setup("dying-relu", dying_relu, "dead-relu", "a layer that dies mid-training after a learning-rate jump"),
    Setup("saturated-tanh", saturated_tanh, "saturation", "tanh layers saturated by a too-large init"),
    Setup("saturated-custom-sigmoid", saturated_custom_sigmoid, "saturation", "a user's sigmoid module, saturated"),
    Setup("unstable-high-lr", unstable_high_lr, "unstable-loss", "Adam at lr 0.1: the loss does not settle"),
    Setup("unstable-sgd-momentum", unstable_sgd_momentum, "unstable-loss", "SGD momentum 0.9 at lr 0.3"),
    Setup("stuck-tiny-lr", stuck_tiny_lr, "loss-not-decreasing", "SGD at lr 1e-6: loss stays at ln(10)"),
    Setup("non-finite-overflow", non_finite_overflow, "non-finite", "SGD at lr 50: weights overflow"),
    Setup("raw-pixels", raw_pixels, "abnormal-input", "0-255 pixels fed as they are"),
    Setup("constant-features", constant_features, "abnormal-input", "62 of 64 features constant"),
    Setup("single-unit-softmax", single_unit_softmax, "improper-output-activation", "softmax over one unit"),
    Setup("nll-on-linear", nll_on_linear, "improper-output-activation", "nll_loss on a linear output"),
    Setup("log-loss-on-relu", log_loss_on_relu, "improper-output-activation", "-log p on a ReLU output"),
    Setup("softmax-into-cross-entropy", softmax_into_cross_entropy, "improper-loss", "softmax before CrossEntropyLoss"),
    Setup("mse-on-softmax", mse_on_softmax, "improper-loss", "MSE on softmax probabilities"),
    Setup("clipped-loss", clipped_loss, "loss-clipping-zero-grad", "Keras 2's clipped cross-entropy, confident"),
    Setup("frozen-dead-input", frozen_dead_input, "frozen-by-dead-input", "always-zero pixels freeze their weights"),
    Setup("update-ratio-imbalance", update_ratio_imbalance, "update-ratio-imbalance", "one layer 100x larger"),
]
