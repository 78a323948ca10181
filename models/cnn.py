"""The MNIST CNN of the first question, layer for layer as its Keras code built it."""
from __future__ import annotations

import torch
from torch import nn

from .keras_layers import KerasBatchNorm1d, KerasBatchNorm2d, KerasDropout, glorot_uniform_


class _FlattenBackToLayout(torch.autograd.Function):
    """Flatten a channels_last (B, C, H, W) tensor in NCHW order, and give its gradient back
    channels_last.

    The flatten is a copy either way; its gradient, though, comes back as a plain (B, C*H*W)
    tensor reshaped, i.e. NCHW. Then the max-pool's backward, seeing an NCHW gradient beside
    channels_last indices, takes its NCHW kernel: it copies the indices and the zeroed
    (B, 64, 24, 24) gradient to NCHW and the result back (three copies, ~23 ms of a 250 ms cnn
    step on one CPU thread). One copy of the small (B, 64, 12, 12) gradient here avoids them."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.shape = x.shape
        return x.flatten(1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad.reshape(ctx.shape).contiguous(memory_format=torch.channels_last)


class LayoutKeepingFlatten(nn.Flatten):
    """``nn.Flatten()`` (NCHW order, the same output) whose gradient keeps a channels_last
    input's layout (see :class:`_FlattenBackToLayout`); otherwise plain ``nn.Flatten``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.start_dim == 1 and self.end_dim == -1 and x.dim() == 4 and x.requires_grad \
                and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
            return _FlattenBackToLayout.apply(x)
        return super().forward(x)


class KerasCNN(nn.Module):
    """Conv64-ReLU-BN, Conv64-ReLU-BN, MaxPool2, Dropout .5, Dense128-ReLU-BN, Dropout .5,
    Dense10. Returns logits: the question's softmax is applied by the loss.

    The convolutions run channels_last (NHWC, Keras' own layout) unless
    ``channels_last=False``: oneDNN's NHWC convolutions, BatchNorm and max-pool kernels made a
    training step ~10% faster on one CPU thread than NCHW (0.89x against 0.98x a plain NCHW
    torch net's step, interleaved; bench/: ``port_vs_plain_torch``); on an H200 the layout made
    no difference beyond noise. The function is the same up to float rounding. Only the memory
    layout changes: shapes, the NCHW flatten order and ``state_dict`` are those of the
    contiguous model, and ``model.to(memory_format=torch.contiguous_format)`` turns it back.
    Its flatten hands the max-pool a channels_last gradient (:class:`LayoutKeepingFlatten`), and
    its dropout layers draw their masks by Keras' rule (:class:`~models.keras_layers.KerasDropout`)."""

    def __init__(self, channels_last: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 64, 3)  # Keras Conv2D(64, (3,3)), padding="valid"
        self.relu1 = nn.ReLU()
        self.bn1 = KerasBatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, 3)
        self.relu2 = nn.ReLU()
        self.bn2 = KerasBatchNorm2d(64)
        self.pool = nn.MaxPool2d(2)
        self.drop1 = KerasDropout(0.5)
        self.flatten = LayoutKeepingFlatten()  # NCHW order; Keras flattens NHWC (see keras_weights)
        self.fc1 = nn.Linear(64 * 12 * 12, 128)
        self.relu3 = nn.ReLU()
        self.bn3 = KerasBatchNorm1d(128)
        self.drop2 = KerasDropout(0.5)
        self.fc2 = nn.Linear(128, 10)
        glorot_uniform_(self)
        if channels_last:  # after the init: the same weights as the contiguous model, bit for bit
            self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, 28, 28) in [0, 1]
        if self.conv2.weight.is_contiguous(memory_format=torch.channels_last):  # conv1's (64,1,3,3) says nothing
            x = x.contiguous(memory_format=torch.channels_last)  # the input in the weights' layout
        x = self.bn1(self.relu1(self.conv1(x)))  # (B, 64, 26, 26)
        x = self.bn2(self.relu2(self.conv2(x)))  # (B, 64, 24, 24)
        x = self.drop1(self.pool(x))  # (B, 64, 12, 12)
        x = self.bn3(self.relu3(self.fc1(self.flatten(x))))  # (B, 128)
        return self.fc2(self.drop2(x))  # (B, 10) logits
