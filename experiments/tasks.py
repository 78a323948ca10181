"""What a model learns from MNIST: the input it gets, the target it is scored against.

* ``classify`` -- the usual: image (B, 1, 28, 28) in [0, 1] -> one of 10 digits (one-hot
  target, categorical loss, accuracy = argmax matches).
* ``shifted-pixels`` -- the small fully-convolutional per-pixel task we built for the
  scaled-conv question, whose original data we do not have. Input: the image repeated on 3
  channels, (B, 3, 28, 28), since the question's first conv takes 3 channels. Target: the
  image binarised at 0.5 (pixel > 0.5 -> 1, else 0; 13% of MNIST's pixels are above) and
  shifted one pixel to the right, (B, 1, 28, 28), the leftmost column 0. Every target pixel
  depends only on the 3x3 neighbourhood of the input pixel at the same place, so two 3x3
  convs can learn it exactly; binary cross-entropy per pixel, accuracy = share of pixels
  where ``sigmoid(logit) > 0.5`` matches the target.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F

from .batches import to_float

BINARY_THRESHOLD = 0.5  # on x / 255


def classify_batch(images: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    return to_float(images), F.one_hot(labels, 10).float()  # (B, 1, 28, 28), (B, 10)


def classify_correct(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(1) == target.argmax(1)).sum()


def shifted_pixels_batch(images: torch.Tensor, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    x = to_float(images)  # (B, 1, 28, 28)
    binary = (x > BINARY_THRESHOLD).float()
    target = torch.zeros_like(binary)
    target[..., 1:] = binary[..., :-1]  # one pixel to the right; column 0 stays 0
    return x.repeat(1, 3, 1, 1), target  # (B, 3, 28, 28), (B, 1, 28, 28)


def shifted_pixels_correct(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((logits > 0) == (target > 0.5)).sum()


@dataclass(frozen=True)
class Task:
    """How to feed a model and score it. ``loss_kind`` picks from ``models.losses.LOSSES[name]``."""

    name: str
    loss_kind: str  # "categorical" | "binary"
    make_batch: Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]
    count_correct: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    accuracy_of: str  # what the accuracy counts, for people

    def batch(self, images: torch.Tensor, labels: torch.Tensor, device: torch.device):
        """(inputs, targets) on ``device`` from a batch of uint8 images and their labels.

        Made on the host, then moved: ``F.one_hot`` on a GPU checks the labels' range with a
        host sync, which cost ~3% of a cnn step on an H200 (measured with torch 2.11)."""
        x, target = self.make_batch(images, labels)
        return x.to(device, non_blocking=True), target.to(device, non_blocking=True)

    def units(self, target: torch.Tensor) -> int:
        """How many things one batch's accuracy counts (images or pixels)."""
        return target.shape[0] if self.loss_kind == "categorical" else target.numel()


TASKS: Dict[str, Task] = {
    "classify": Task("classify", "categorical", classify_batch, classify_correct, "images"),
    "shifted-pixels": Task("shifted-pixels", "binary", shifted_pixels_batch, shifted_pixels_correct, "pixels"),
}
