"""Batching by index from in-memory uint8 tensors: no per-sample Python transforms."""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch

from .mnist import Split


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 28, 28) -> float32 (B, 1, 28, 28) in [0, 1], as Keras' ``x / 255``."""
    return images.unsqueeze(1).float().div_(255.0)


def batches(split: Split, batch_size: int, generator: Optional[torch.Generator] = None,
            shuffle: bool = True) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images uint8, labels) batches of a split, shuffled with ``generator``.

    The last batch may be smaller, as Keras' ``fit`` does.
    """
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield split.images[idx], split.labels[idx]


def num_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size
