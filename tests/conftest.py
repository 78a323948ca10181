"""Shared fixtures: real MNIST from ../shared/data/mnist (or $MNIST_DIR), CLI helpers, the
confident cnn run, the small training loop and hook count the probe tests share, and a check
that the suite leaves nothing behind in the working tree."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MNIST = REPO.parent / "shared" / "data" / "mnist"
# A safety net against a hung process, not a timing: a busy two-core machine may take many
# times longer than an idle one, and that must not fail a test.
TIMEOUT = 1800

# One thread per process, here and in every subprocess the tests start (a value set outside
# wins): on a two-core machine shared with other jobs, torch's one thread per core makes each
# process wait on the others' (test_pair_scan on a busy machine: 34 s with two threads, 7 s with one).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


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


def run_cli(*args: str, env_extra: dict | None = None, cwd: Path | None = None, timeout: int = TIMEOUT):
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


# -- the confident cnn: 896 steps, trained once per session --------------------------------

# Reaching confident predictions cheaply: 1,024 images, batch 32, 28 epochs = 896 steps
# (BatchNorm's moving averages need several hundred steps at Keras' momentum 0.99).
CONFIDENT = ["--train-size", "1024", "--batch-size", "32", "--epochs", "28", "--test-size", "500",
             "--scan-images", "300", "--scan-norm-images", "0", "--log-every", "200"]


@pytest.fixture(scope="session")
def confident_cnn_runs(tmp_path_factory):
    """``loss -> run dir`` of the cnn trained to confidence with each loss (minutes each: slow
    tests only). Trained on first use, once per session, for every test that reads them."""
    runs = {}

    def run(loss: str) -> Path:
        if loss not in runs:
            run_dir = tmp_path_factory.mktemp("confident") / loss
            proc = run_cli("--model", "cnn", "--loss", loss, *CONFIDENT, "--run-dir", str(run_dir))
            assert proc.returncode == 0, proc.stderr
            runs[loss] = run_dir
        return runs[loss]

    return run


# -- the small training loop and the hook count of the probe tests -------------------------

def batches(steps: int, size: int, features: int, classes: int = 3, seed: int = 1, zero=()):
    """``steps`` random ``(x, y)`` classification batches from a private generator (the global
    RNG is left alone); the features in ``zero`` are 0 in every example."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(size, features, generator=gen)
        x[:, list(zero)] = 0
        yield x, torch.randint(0, classes, (size,), generator=gen)


def fit(model: nn.Module, data, optimizer, monitor=None) -> list:
    """A plain loop: cross-entropy, backward, optimizer step, then ``monitor.step(loss)``.
    Returns each step's logits (a model returning a dict gives them under ``"logits"``)."""
    outputs = []
    for x, y in data:
        optimizer.zero_grad()
        out = model(x)
        logits = out["logits"] if isinstance(out, dict) else out
        loss = nn.functional.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        outputs.append(logits.detach().clone())
        if monitor is not None:
            monitor.step(loss)
    return outputs


def hook_count(model: nn.Module) -> int:
    """Hooks registered on the model's modules and parameters (0 once every probe is detached)."""
    n = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())
    return n + sum(len(getattr(p, "_post_accumulate_grad_hooks", None) or {}) for p in model.parameters())


# -- nothing left in the working tree ------------------------------------------------------

def _left_behind() -> set | None:
    """What git reports as ignored (build/, runs/, *.pt...) or untracked, but for caches and
    for new sources (.py, .md: files a person adds, which in a shared tree may appear while
    the tests run); None without git."""
    if shutil.which("git") is None:
        return None
    proc = subprocess.run(["git", "status", "--porcelain", "--ignored"], capture_output=True, text=True, cwd=REPO,
                          timeout=TIMEOUT)
    if proc.returncode != 0:
        return None
    paths = {line[3:] for line in proc.stdout.splitlines() if line[:2] in ("??", "!!")}
    return {p for p in paths if "__pycache__" not in p and ".pytest_cache" not in p and not p.endswith((".py", ".md"))}


@pytest.fixture(scope="session", autouse=True)
def leaves_the_working_tree_clean():
    """Tests write under tmp_path: a build/, runs/ or stray file in the repository after the
    session is an error (reported at the last test's teardown)."""
    before = _left_behind()
    yield
    after = _left_behind()
    if before is not None and after is not None:
        assert not after - before, f"the tests left these in the working tree: {sorted(after - before)}"
