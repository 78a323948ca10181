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
    does (torch uses the unbiased one). Normalisation itself is identical in both.

    torch's kernel updates ``running_var`` to ``(1 - m) * rv + m * n / (n - 1) * biased``
    (``n`` values per channel). Handing it ``rv * n / (n - 1)`` and dividing the result by
    ``n / (n - 1)`` gives Keras' ``(1 - m) * rv + m * biased`` from the statistics the kernel
    computes anyway: one pass over the batch instead of a second ``var_mean`` (~14% of a cnn
    step on CPU), equal to it up to float rounding (tests/test_keras_weights.py)."""

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        n = x.numel() // x.shape[1]
        bessel = n / (n - 1) if n > 1 else 1.0
        with torch.no_grad():
            scaled_var = self.running_var * bessel  # a copy: the kernel's backward keeps it
            self.num_batches_tracked.add_(1)
        out = F.batch_norm(x, self.running_mean, scaled_var, self.weight, self.bias, True, self.momentum, self.eps)
        with torch.no_grad():  # one op, not a division and a copy: on a GPU each op is a launch
            torch.div(scaled_var, bessel, out=self.running_var)
        return out


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
