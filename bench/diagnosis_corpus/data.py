"""Data for the corpus: MNIST subsets (in memory, loaded once) and small synthetic tasks.

Everything is drawn from a generator seeded by the run's seed, so a run is reproducible
and seeds differ in their data order as well as their initialisation.
"""
from __future__ import annotations

import functools
import math
from typing import List, Tuple

import torch

from experiments.mnist import load_mnist

Batch = Tuple[torch.Tensor, torch.Tensor]
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081  # pytorch/examples' mnist/main.py
SUBSET = 4096


@functools.lru_cache(maxsize=1)
def _mnist() -> Tuple[torch.Tensor, torch.Tensor]:
    train = load_mnist(allow_download=False)["train"]
    return train.images[:SUBSET], train.labels[:SUBSET]


def mnist_batches(seed: int, steps: int, batch: int, scale: str = "standard") -> List[Batch]:
    """``steps`` MNIST batches (B, 1, 28, 28) from the first 4,096 training images.

    scale: ``standard`` ((x / 255 - mean) / std, pytorch/examples), ``unit`` (x / 255, ToTensor
    alone) or ``raw`` (the 0-255 bytes as floats: the fault)."""
    images, labels = _mnist()
    gen = torch.Generator().manual_seed(seed)
    out: List[Batch] = []
    order = torch.randperm(len(labels), generator=gen)
    at = 0
    for _ in range(steps):
        if at + batch > len(order):
            order, at = torch.randperm(len(labels), generator=gen), 0
        idx = order[at:at + batch]
        at += batch
        x = images[idx].unsqueeze(1).float()
        if scale != "raw":
            x = x / 255.0
        if scale == "standard":
            x = (x - MNIST_MEAN) / MNIST_STD
        out.append((x, labels[idx]))
    return out


def clusters(seed: int, steps: int, batch: int, features: int = 32, classes: int = 10,
             spread: float = 1.0) -> List[Batch]:
    """Gaussian clusters: class c has a random unit-scale centre; inputs are centre + noise * spread."""
    gen = torch.Generator().manual_seed(seed + 1000)
    centres = torch.randn(classes, features, generator=gen)
    out = []
    for _ in range(steps):
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = centres[y] + spread * torch.randn(batch, features, generator=gen)
        out.append((x / math.sqrt(1 + spread ** 2), y))
    return out


def token_sequences(seed: int, steps: int, batch: int, length: int = 16, vocab: int = 24,
                    classes: int = 4) -> List[Batch]:
    """Sequences of token ids whose class is the group of tokens that occurs most: tokens
    ``4 + 5c ... 4 + 5c + 4`` belong to class ``c``; a sequence of class c draws half its tokens
    from its group and the rest uniformly (the first 4 ids are common filler)."""
    gen = torch.Generator().manual_seed(seed + 2000)
    out = []
    for _ in range(steps):
        y = torch.randint(0, classes, (batch,), generator=gen)
        own = 4 + 5 * y.unsqueeze(1) + torch.randint(0, 5, (batch, length), generator=gen)
        other = torch.randint(0, vocab, (batch, length), generator=gen)
        pick = torch.rand(batch, length, generator=gen) < 0.5
        out.append((torch.where(pick, own, other), y))
    return out
