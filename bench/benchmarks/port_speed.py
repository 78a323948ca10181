"""The port's training step (``models.build("cnn")``, Keras 2's clipped loss, Keras' Adadelta,
as train.py steps it) against a plain torch net of the same shape written the usual way.

The plain net is what a PyTorch user writes for the question's model: ``nn.Sequential`` with
``nn.BatchNorm2d`` (Keras' epsilon and momentum, torch's unbiased moving variance),
cross-entropy on logits and ``torch.optim.Adadelta`` with its defaults besides Keras' rho and
epsilon. The port keeps Keras' semantics (biased moving variance, the probability clip), so
the ratio says what those cost, and whatever the port does differently for speed
(channels_last, foreach Adadelta) shows. The same plain net in channels_last is timed too:
the fastest plain formulation measured here, the bar the port is held to in details.
"""
from __future__ import annotations

import itertools
from statistics import median
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from models.keras_layers import KERAS_BN_EPS, KERAS_BN_MOMENTUM
from models.optimizers import KERAS_EPSILON

from ..sizes import Sizes
from ..timing import at_thread_counts, interleaved, spread
from ..workload import fresh_cnn, train_step

KEY = "port_vs_plain_torch"


def plain_cnn(device: torch.device, channels_last: bool = False):
    """The question's cnn as plain torch: (model, optimizer), seed-0 weights (torch's init)."""
    torch.manual_seed(0)

    def bn(cls, n):
        return cls(n, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)

    model = nn.Sequential(
        nn.Conv2d(1, 64, 3), nn.ReLU(), bn(nn.BatchNorm2d, 64),
        nn.Conv2d(64, 64, 3), nn.ReLU(), bn(nn.BatchNorm2d, 64),
        nn.MaxPool2d(2), nn.Dropout(0.5), nn.Flatten(),
        nn.Linear(64 * 12 * 12, 128), nn.ReLU(), bn(nn.BatchNorm1d, 128), nn.Dropout(0.5),
        nn.Linear(128, 10),
    ).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, torch.optim.Adadelta(model.parameters(), lr=1.0, rho=0.95, eps=KERAS_EPSILON)


def plain_step(model, optimizer, x, y) -> torch.Tensor:
    optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss


def port_vs_plain(xs, device: torch.device, sizes: Sizes, counts: List[int], log) -> Dict:
    """The ratio port / plain at each thread count in ``counts`` (the worse is the headline)."""

    def measure(n: int) -> Dict:
        port, plain, plain_cl = fresh_cnn(device), plain_cnn(device), plain_cnn(device, channels_last=True)
        shapes = [[tuple(p.shape) for p in m.parameters()] for m in (port[0], plain[0])]
        assert sorted(shapes[0]) == sorted(shapes[1]), "the plain net must have the port's shape"
        xl = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in xs]
        c1, c2, c3 = itertools.cycle(xs), itertools.cycle(xs), itertools.cycle(xl)
        fns = {"port": lambda: train_step(*port, *next(c1)), "plain": lambda: plain_step(*plain, *next(c2)),
               "plain_channels_last": lambda: plain_step(*plain_cl, *next(c3))}
        for fn in fns.values():  # warm-up: allocator, oneDNN primitives, optimizer state
            fn()
            fn()
        ratios, ratios_cl, steps = [], [], {k: [] for k in fns}
        for _ in range(sizes.repeats):
            times = interleaved(fns, sizes.overhead_rounds, device)
            m = {k: median(v) for k, v in times.items()}
            for k in fns:
                steps[k].append(m[k])
            ratios.append(m["port"] / m["plain"])
            ratios_cl.append(m["port"] / m["plain_channels_last"])
        out = {KEY: spread(ratios), "port_vs_plain_channels_last": spread(ratios_cl),
               "step_seconds": {k: spread(v) for k, v in steps.items()}}
        log(f"port vs plain torch at {n} thread(s): {out[KEY]['median']}x the plain step, "
            f"{out['port_vs_plain_channels_last']['median']}x the plain channels_last step")
        return out

    out = at_thread_counts(measure, counts, KEY, higher_is_better=False)
    out.update(batch=sizes.batch, method=(
        f"{sizes.repeats} repeats x {sizes.overhead_rounds} interleaved training steps (batch {sizes.batch}) of each: "
        "the port as train.py steps it (models.build('cnn'), channels_last by default; Keras 2's clipped "
        "cross-entropy on one-hot targets; Adadelta(lr=1, rho=0.95, eps=1e-7, foreach)) vs plain nn.Sequential of the "
        "same shape (nn.BatchNorm2d/1d with eps=1e-3, momentum=0.01; F.cross_entropy on logits; "
        "torch.optim.Adadelta(lr=1, rho=0.95, eps=1e-7), defaults otherwise) contiguous, and the same plain net "
        "channels_last; ratio = median port step / median plain step within each repeat"))
    return out
