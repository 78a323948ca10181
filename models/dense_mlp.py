"""The MLP of the frozen-first-layer question: 784-512-512-10, ReLU, dropout 0.2.

Keras ``kernel_initializer="random_uniform"`` is U(-0.05, 0.05) in Keras 2; biases zero.
"""
from __future__ import annotations

import torch
from torch import nn

from .keras_layers import KerasDropout

KERAS_RANDOM_UNIFORM = 0.05  # keras.initializers.RandomUniform(minval=-0.05, maxval=0.05)


class DenseMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()  # (B, 1, 28, 28) -> (B, 784), row-major as Keras' reshape
        self.fc1 = nn.Linear(784, 512)
        self.relu1 = nn.ReLU()
        self.drop1 = KerasDropout(0.2)
        self.fc2 = nn.Linear(512, 512)
        self.relu2 = nn.ReLU()
        self.drop2 = KerasDropout(0.2)
        self.fc3 = nn.Linear(512, 10)
        for layer in (self.fc1, self.fc2, self.fc3):
            nn.init.uniform_(layer.weight, -KERAS_RANDOM_UNIFORM, KERAS_RANDOM_UNIFORM)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop1(self.relu1(self.fc1(self.flatten(x))))  # (B, 512)
        x = self.drop2(self.relu2(self.fc2(x)))  # (B, 512)
        return self.fc3(x)  # (B, 10) logits
