"""Interrupt and resume bit for bit, SIGINT/SIGTERM on a real process, stop on NaN/Inf.

dense-mlp on 640 images: small and quick, and it has dropout (the torch RNG must be
restored) and the two probes with the most state (FrozenWeights, DeadInputs).
"""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO, TIMEOUT, mnist_dir, read_events, read_summary, run_cli

ARGS = ["--model", "dense-mlp", "--train-size", "640", "--test-size", "100", "--batch-size", "16", "--epochs", "2",
        "--log-every", "3"]
ENV = {"OMP_NUM_THREADS": "1"}  # a shared machine; also the same threads for both runs
pytestmark = pytest.mark.slow  # several training runs per test, and signals sent to them


def load_checkpoint(run_dir):
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)


def same(a, b, where="checkpoint"):
    """Bitwise equality of nested checkpoint contents; raises AssertionError naming the difference."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b) or (a.is_floating_point() and torch.equal(a.isnan(), b.isnan())
                                     and torch.equal(a.nan_to_num(), b.nan_to_num())), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def start(run_dir):
    env = dict(os.environ, MNIST_DIR=os.environ.get("MNIST_DIR") or str(mnist_dir()), PYTHONUNBUFFERED="1", **ENV)
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *ARGS, "--run-dir", str(run_dir)], env=env,
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def interrupt_when(proc, prefix, signum, timeout=TIMEOUT):
    """Send ``signum`` once the process prints a line starting with ``prefix``; (exit status, output)."""
    lines, deadline = [], time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(prefix):
            proc.send_signal(signum)
            break
        assert time.monotonic() < deadline, "".join(lines)
    rest, _ = proc.communicate(timeout=timeout)
    return proc.returncode, "".join(lines) + rest


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    proc = run_cli(*ARGS, "--run-dir", str(run_dir), env_extra=ENV)
    assert proc.returncode == 0, proc.stderr
    return run_dir


def assert_same_run(resumed, reference):
    a, b = load_checkpoint(reference), load_checkpoint(resumed)
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] == 80
    same(a["runs"], b["runs"])  # weights, optimizer, probe states, history, kept scalars: bitwise
    same({k: a["rng"][k] for k in ("torch", "batch_order")}, {k: b["rng"][k] for k in ("torch", "batch_order")})
    ref, res = read_summary(reference), read_summary(resumed)
    ignore = {"seconds", "resumed_after_epoch"}
    assert {k: v for k, v in ref.items() if k not in ignore} == {k: v for k, v in res.items() if k not in ignore}
    # TensorBoard, read by TensorBoard: every tag at every step exactly once, with the same values
    ea, eb = read_events(reference), read_events(resumed)
    assert ea.Tags()["scalars"] == eb.Tags()["scalars"] and ea.Tags()["histograms"] == eb.Tags()["histograms"]
    for tag in ea.Tags()["scalars"]:
        assert [(e.step, e.value) for e in ea.Scalars(tag)] == [(e.step, e.value) for e in eb.Scalars(tag)], tag
    for tag in ea.Tags()["histograms"]:  # contents too: the sampler's generator is checkpointed
        assert [(e.step, e.histogram_value) for e in ea.Histograms(tag)] == \
            [(e.step, e.histogram_value) for e in eb.Histograms(tag)], tag
    assert [e.step for e in eb.Scalars("train/loss")] == list(range(80))


def test_sigint_after_epoch_1_then_resume_is_bitwise_the_uninterrupted_run(reference, tmp_path):
    run_dir = tmp_path / "run"
    status, out = interrupt_when(start(run_dir), "epoch 1:", signal.SIGINT)
    assert status == 130, out
    assert "interrupted by SIGINT" in out and f"--resume {run_dir}" in out and "Traceback" not in out
    assert load_checkpoint(run_dir)["epoch"] >= 1 and not (run_dir / "summary.json").exists()
    proc = run_cli("--resume", str(run_dir), env_extra=ENV)
    assert proc.returncode == 0, proc.stderr
    assert "resumed from" in proc.stdout
    assert_same_run(run_dir, reference)


def test_sigterm_in_epoch_1_then_resume_is_bitwise_the_uninterrupted_run(reference, tmp_path):
    run_dir = tmp_path / "run"
    status, out = interrupt_when(start(run_dir), "epoch 1/2 [", signal.SIGTERM)  # the progress line after step 1
    assert status == 143, out
    assert "interrupted by SIGTERM" in out and "Traceback" not in out
    proc = run_cli("--resume", str(run_dir), "--model", "dense-mlp", env_extra=ENV)
    assert proc.returncode == 0, proc.stderr
    assert_same_run(run_dir, reference)


def test_nan_stops_with_the_last_good_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    args = ["--model", "deep-relu", "--lr", "1e6", "--train-size", "256", "--test-size", "100", "--batch-size",
            "32", "--epochs", "1", "--scan-images", "0"]
    proc = run_cli(*args, "--run-dir", str(run_dir), env_extra=ENV)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr
    assert last.startswith("train.py: error: stopped: first NaN/Inf at step ") and "layer layers." in last, last
    kept = load_checkpoint(run_dir)
    assert kept["epoch"] == 0 and all(t.isfinite().all() for t in kept["runs"][0]["model"].values())
    assert not (run_dir / "summary.json").exists()
    # as the message says, --resume with --keep-going trains on: its weights really are non-finite at the end
    assert f"python train.py --resume {run_dir} --keep-going" in last
    proc = run_cli("--resume", str(run_dir), "--keep-going", env_extra=ENV)
    assert proc.returncode == 0, proc.stderr
    assert "--keep-going: training on" in proc.stderr
    assert read_summary(run_dir)["nonfinite"]["model"]["message"] in last
    final = load_checkpoint(run_dir)["runs"][0]["model"]
    assert not all(t.isfinite().all() for t in final.values())
