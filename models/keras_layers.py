"""Layers and initialisers that behave as Keras 2's do, where torch's defaults differ."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Keras BatchNormalization: momentum=0.99, epsilon=1e-3 -> torch momentum=0.01, eps=1e-3.
KERAS_BN_EPS = 1e-3
KERAS_BN_MOMENTUM = 0.01


class _KerasBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose moving variance is updated with the *biased* batch variance, as Keras
    does (torch uses the unbiased one). Normalisation itself is identical in both."""

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        dims = [0] + list(range(2, x.dim()))
        with torch.no_grad():
            var, mean = torch.var_mean(x, dim=dims, unbiased=False)
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var, self.momentum)
            self.num_batches_tracked.add_(1)
        return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)


class KerasBatchNorm1d(_KerasBatchNorm, nn.BatchNorm1d):
    pass


class KerasBatchNorm2d(_KerasBatchNorm, nn.BatchNorm2d):
    pass


def glorot_uniform_(module: nn.Module) -> None:
    """Keras' default kernel init (glorot_uniform) and zero biases for Conv/Linear layers.

    torch's xavier_uniform_ computes the same fans as Keras for OIHW and (out, in) weights.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
