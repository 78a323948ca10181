"""The probes in a Lightning project: one callback, logs through the trainer's TensorBoard logger.

Run: python examples/lightning_callback.py --steps 100   (MNIST from $MNIST_DIR or ./data)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from probes.lightning import ProbeCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the clone's experiments/ (MNIST loading)
from experiments.mnist import load_mnist  # noqa: E402


class LitMLP(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(inplace=True), nn.Linear(64, 10))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="training steps (default: 100)")
    parser.add_argument("--train-size", type=int, default=2048, help="MNIST training images used (default: 2048)")
    parser.add_argument("--log-dir", default="runs", help="TensorBoard root (default: runs)")
    parser.add_argument("--data-dir", help="MNIST folder (default: $MNIST_DIR, else ./data)")
    args = parser.parse_args()

    train = load_mnist(args.data_dir)["train"]
    x = train.images[: args.train_size].unsqueeze(1).float() / 255
    loader = DataLoader(TensorDataset(x, train.labels[: args.train_size]), batch_size=64, shuffle=True)
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(max_steps=args.steps, accelerator="cpu", logger=TensorBoardLogger(args.log_dir, name="lightning"),
                         callbacks=[ProbeCallback(every=10)], enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(LitMLP(), loader)
    print(f"logs in {trainer.logger.log_dir}")


if __name__ == "__main__":
    main()
