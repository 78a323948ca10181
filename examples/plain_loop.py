"""Probes in a training loop that is not ours: a small residual net on synthetic data.

The model has what trips hook-based tools: in-place ReLUs, one block used twice per forward
(shared weights), and a parameter-free pooling layer. Three lines add the probes:

    monitor = probes.watch(model, log_dir, every=10, optimizer=optimizer)
    ...                        # the loop is unchanged; monitor.log_loss(loss) adds the loss curve
    monitor.__exit__ / with    # flushes and detaches

Run: python examples/plain_loop.py --steps 200 --log-dir runs/example  (then tensorboard --logdir runs)
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

import probes


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)
        self.norm = nn.BatchNorm2d(width)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.act(self.norm(self.conv(x)))


class TinyResNet(nn.Module):
    def __init__(self, width: int = 16, classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.stem_act = nn.ReLU(inplace=True)
        self.shared = Block(width)  # applied twice: tied weights
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem(x))
        x = self.shared(self.shared(x))
        return self.head(self.pool(x).flatten(1))


def synthetic_batch(generator: torch.Generator, size: int = 32):
    """Images whose class is the quadrant holding the brightest blob."""
    x = torch.randn(size, 3, 16, 16, generator=generator) * 0.1
    y = torch.randint(0, 4, (size,), generator=generator)
    rows, cols = (y // 2) * 8 + 4, (y % 2) * 8 + 4
    for i in range(size):
        x[i, :, rows[i] - 2:rows[i] + 2, cols[i] - 2:cols[i] + 2] += 1.0
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps (default: 200)")
    parser.add_argument("--log-dir", default="runs/example-plain-loop", help="TensorBoard directory")
    parser.add_argument("--every", type=int, default=10, help="probe logging interval (default: 10)")
    args = parser.parse_args()

    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = TinyResNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    with probes.watch(model, args.log_dir, every=args.every, optimizer=optimizer) as monitor:
        for step in range(args.steps):
            x, y = synthetic_batch(generator)
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            monitor.log_loss(loss)
            optimizer.step()  # the monitor counts the step through an optimizer hook
    print(f"trained {monitor.global_step} steps, final loss {loss.item():.3f}; logs in {args.log_dir}")
    print(monitor.report())  # the diagnosis, in sentences


if __name__ == "__main__":
    main()
