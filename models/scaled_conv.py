"""The three parameterisations of the reparameterisation question, no biases, same padding.

(1) Conv 200 3x3 -> tanh -> Conv 1 3x3 -> sigmoid
(2) the convs' outputs divided by 3 and by 200 before tanh and sigmoid
(3) the convs' inputs divided by 3 and by 200

Variants 2 and 3 use variant 1's weights x3 (first conv) and x200 (second conv), so all
three compute the same function at step 0; only the gradient scale differs. The model
returns the pre-sigmoid logits (B, 1, 28, 28): the sigmoid is applied by the loss.
"""
from __future__ import annotations

import torch
from torch import nn

SCALES = (3.0, 200.0)  # the question's divisors for the first and second conv


class ScaledConvNet(nn.Module):
    def __init__(self, variant: int = 1) -> None:
        super().__init__()
        if variant not in (1, 2, 3):
            raise ValueError(f"scaled-conv variant must be 1, 2 or 3, got {variant}")
        self.variant = variant
        self.conv1 = nn.Conv2d(3, 200, 3, padding=1, bias=False)
        self.act1 = nn.Tanh()
        self.conv2 = nn.Conv2d(200, 1, 3, padding=1, bias=False)
        for conv in (self.conv1, self.conv2):  # Keras glorot_uniform
            nn.init.xavier_uniform_(conv.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 3, 28, 28)
        s1, s2 = SCALES
        if self.variant == 1:
            return self.conv2(self.act1(self.conv1(x)))
        if self.variant == 2:
            return self.conv2(self.act1(self.conv1(x) / s1)) / s2
        return self.conv2(self.act1(self.conv1(x / s1)) / s2)

    @torch.no_grad()
    def load_variant1_weights(self, base: "ScaledConvNet") -> "ScaledConvNet":
        """Take variant 1's weights, scaled so this variant computes the same function."""
        factor1, factor2 = (1.0, 1.0) if self.variant == 1 else SCALES
        self.conv1.weight.copy_(base.conv1.weight * factor1)
        self.conv2.weight.copy_(base.conv2.weight * factor2)
        return self
