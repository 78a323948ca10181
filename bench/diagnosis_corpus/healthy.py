"""Healthy setups: ordinary networks trained as their users train them, at several batch sizes.

None of them may get a warning or an error (infos are allowed: frozen weights of always-zero
pixels are a fact of MNIST, not a fault).
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from . import data
from .nets import GRUClassifier, MnistNet, SmallResNet, TinyTransformer, mlp
from .setups import Setup, Trial

CE = nn.CrossEntropyLoss()


def mnist_net(batch: int, steps: int):
    """pytorch/examples' MNIST Net with its own recipe: Adadelta lr 1.0, nll_loss, normalised input."""
    def build(seed: int) -> Trial:
        model = MnistNet()
        return Trial(model, torch.optim.Adadelta(model.parameters(), lr=1.0), F.nll_loss,
                     data.mnist_batches(seed, steps, batch), 10)
    return build


def relu_mlp(batch: int, steps: int):
    """A ReLU MLP on ToTensor-scaled MNIST ([0, 1]), Adam 1e-3, CrossEntropyLoss."""
    def build(seed: int) -> Trial:
        model = mlp([784, 256, 128, 10])
        return Trial(model, torch.optim.Adam(model.parameters(), lr=1e-3), CE,
                     data.mnist_batches(seed, steps, batch, scale="unit"), 10)
    return build


def transformer(batch: int, steps: int):
    """A 2-layer pre-norm transformer encoder classifying token sequences, AdamW 1e-3."""
    def build(seed: int) -> Trial:
        model = TinyTransformer()
        return Trial(model, torch.optim.AdamW(model.parameters(), lr=1e-3), CE,
                     data.token_sequences(seed, steps, batch), 10)
    return build


def resnet(batch: int, steps: int):
    """A small ResNet with BatchNorm, SGD with momentum 0.9 and weight decay, normalised MNIST."""
    def build(seed: int) -> Trial:
        model = SmallResNet()
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        return Trial(model, opt, CE, data.mnist_batches(seed, steps, batch), 10)
    return build


def tanh_mlp(seed: int) -> Trial:
    """A tanh MLP with Glorot initialisation (torch's default for Linear is close), SGD 0.1."""
    model = mlp([32, 64, 64, 10], nn.Tanh, flatten=False)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
    return Trial(model, torch.optim.SGD(model.parameters(), lr=0.1), CE, data.clusters(seed, 200, 32), 10)


def sigmoid_binary(seed: int) -> Trial:
    """A binary classifier ending in nn.Sigmoid, trained with BCELoss: the classic way."""
    model = mlp([32, 64, 1], out=nn.Sigmoid(), flatten=False)
    batches = [(x, (y % 2).float().unsqueeze(1)) for x, y in data.clusters(seed, 200, 32, classes=2)]
    return Trial(model, torch.optim.Adam(model.parameters(), lr=1e-2), nn.BCELoss(), batches, 10)


def softmax_log_loss(seed: int) -> Trial:
    """A Keras-style classifier: softmax as the model's last layer, the loss -log p[target] written
    by hand (correct: the loss expects probabilities and gets them)."""
    model = mlp([784, 128, 10], out=nn.Softmax(dim=1))

    def log_loss(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -torch.log(p.gather(1, y.unsqueeze(1)).clamp_min(1e-12)).mean()

    return Trial(model, torch.optim.Adam(model.parameters(), lr=1e-3), log_loss,
                 data.mnist_batches(seed, 120, 64, scale="unit"), 10)


def gru(seed: int) -> Trial:
    """A GRU classifying token sequences, Adam 3e-3, the gradient norm clipped to 1 as RNN users do."""
    model = GRUClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    return Trial(model, opt, CE, data.token_sequences(seed, 200, 32), 10,
                 before_step=lambda: nn.utils.clip_grad_norm_(model.parameters(), 1.0))


def regression(seed: int) -> Trial:
    """A regression MLP (linear output, MSE) on a smooth function of 8 inputs, Adam 1e-3."""
    gen = torch.Generator().manual_seed(seed + 3000)
    w = torch.randn(8, generator=gen)
    batches = []
    for _ in range(200):
        x = torch.randn(64, 8, generator=gen)
        batches.append((x, torch.sin(x @ w / 2).unsqueeze(1) + 0.1 * torch.randn(64, 1, generator=gen)))
    model = mlp([8, 64, 64, 1], flatten=False)
    return Trial(model, torch.optim.Adam(model.parameters(), lr=1e-3), nn.MSELoss(), batches, 10)


HEALTHY: List[Setup] = [
    Setup("mnist-net-b16", mnist_net(16, 120), tags=["cnn"]),
    Setup("mnist-net-b64", mnist_net(64, 50), tags=["cnn"]),
    Setup("mlp-b32", relu_mlp(32, 150), tags=["mlp"]),
    Setup("mlp-b128", relu_mlp(128, 80), tags=["mlp"]),
    Setup("transformer-b32", transformer(32, 200), tags=["transformer"]),
    Setup("transformer-b64", transformer(64, 150), tags=["transformer"]),
    Setup("resnet-b32", resnet(32, 100), tags=["resnet"]),
    Setup("resnet-b128", resnet(128, 40), tags=["resnet"]),
    Setup("tanh-mlp", tanh_mlp, tags=["mlp"]),
    Setup("sigmoid-binary", sigmoid_binary, tags=["mlp"]),
    Setup("softmax-log-loss", softmax_log_loss, tags=["mlp"]),
    Setup("gru-b32", gru, tags=["rnn"]),
    Setup("regression-mlp", regression, tags=["mlp"]),
]
