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


class KerasDropout(nn.Dropout):
    """Dropout by Keras' own rule: keep an element where a uniform draw in [0, 1) is ``>= p``,
    and scale what is kept by ``1 / (1 - p)`` (TensorFlow's ``tf.nn.dropout``, which Keras 2's
    ``Dropout`` calls).

    The distribution is torch's (each element kept with probability ``1 - p``, the same
    scaling), but not its random stream: torch's CPU ``bernoulli_`` draws the mask one element
    at a time on one thread, 16.9 ms for the cnn's 1.2 M-element mask here, against 5.1 ms for
    ``rand_like`` and a comparison (2-core CPU, one or two threads alike; a quarter of the
    cnn's forward pass). Still an ``nn.Dropout``: probes and ``model.eval()`` treat it as one.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.p == 1.0:  # as torch's: every element dropped (x * 0, so NaN and inf stay NaN)
            return x.mul_(0.0) if self.inplace else x * 0.0
        # float32 draws for half-precision inputs: a bfloat16 uniform has 8 bits, which would bend p
        draws = torch.rand_like(x, dtype=torch.float32) if x.element_size() < 4 else torch.rand_like(x)
        scale = draws.ge_(self.p).mul_(1.0 / (1.0 - self.p)).to(x.dtype)  # 0 or 1/(1-p), in x's layout
        return x.mul_(scale) if self.inplace else x * scale


def glorot_uniform_(module: nn.Module) -> None:
    """Keras' default kernel init (glorot_uniform) and zero biases for Conv/Linear layers.

    torch's xavier_uniform_ computes the same fans as Keras for OIHW and (out, in) weights.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
