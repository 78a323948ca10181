"""Shared fixtures: real MNIST from ../shared/data/mnist (or $MNIST_DIR) and CLI helpers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MNIST = REPO.parent / "shared" / "data" / "mnist"


def mnist_dir() -> Path:
    path = Path(os.environ.get("MNIST_DIR") or DEFAULT_MNIST)
    if not (path / "train-images-idx3-ubyte.gz").exists() and not (path / "MNIST" / "raw").exists():
        pytest.fail(f"real MNIST is needed at {path}: set MNIST_DIR to the folder of the four IDX files")
    return path


@pytest.fixture(scope="session")
def mnist_path() -> Path:
    return mnist_dir()


@pytest.fixture(scope="session")
def mnist(mnist_path):
    from experiments.mnist import load_mnist

    return load_mnist(str(mnist_path), allow_download=False)


def run_cli(*args: str, env_extra: dict | None = None, cwd: Path | None = None, timeout: int = 600):
    """Run ``python train.py ARGS`` as a real subprocess; returns the CompletedProcess."""
    env = dict(os.environ)
    env.update(env_extra or {})
    env.setdefault("MNIST_DIR", str(mnist_dir()))
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], capture_output=True, text=True,
                          env=env, cwd=cwd or REPO, timeout=timeout)


def read_summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def read_events(run_dir: Path):
    """Load a run's TensorBoard events with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc
