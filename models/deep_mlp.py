"""The deep MLP of the vanishing-gradient question: 784-1000-750-500-10.

Sigmoid hidden layers (the question) or ReLU (the contrast), softmax output applied by the
loss. Weights N(0, 1)/sqrt(fan_in) and zero biases, as the original Theano code drew them.
"""
from __future__ import annotations

import math

import torch
from torch import nn

SIZES = (784, 1000, 750, 500, 10)
ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}


class DeepMLP(nn.Module):
    def __init__(self, activation: str = "sigmoid") -> None:
        super().__init__()
        layers = []
        for i, (fan_in, fan_out) in enumerate(zip(SIZES[:-1], SIZES[1:])):
            linear = nn.Linear(fan_in, fan_out)
            with torch.no_grad():
                linear.weight.normal_(0.0, 1.0).div_(math.sqrt(fan_in))  # N(0,1)/sqrt(fan_in)
                linear.bias.zero_()
            layers.append(linear)
            if i < len(SIZES) - 2:
                layers.append(ACTIVATIONS[activation]())
        self.flatten = nn.Flatten()
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, 28, 28) -> (B, 10) logits
        return self.layers(self.flatten(x))


def deep_sigmoid() -> DeepMLP:
    return DeepMLP("sigmoid")


def deep_relu() -> DeepMLP:
    return DeepMLP("relu")
