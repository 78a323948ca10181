"""The examples run end to end at a tiny budget, as a user would start them."""
import os
import subprocess
import sys

import pytest

from conftest import REPO, TIMEOUT, mnist_dir, read_events


def run_example(name, *args):
    env = dict(os.environ, MNIST_DIR=str(mnist_dir()), PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(REPO / "examples" / name), *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=TIMEOUT)


def test_plain_loop_example(tmp_path):
    proc = run_example("plain_loop.py", "--steps", "12", "--every", "5", "--log-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    tags = read_events(tmp_path).Tags()
    # the shared block is measured at both of its calls, the in-place ReLU too
    assert {"activation_zero_fraction/shared.act", "activation_zero_fraction/shared.act#1",
            "output_grad_norm/shared.norm#1", "grad_norm/shared.conv.weight"} <= set(tags["scalars"])


def test_lightning_example(tmp_path):
    pytest.importorskip("lightning", reason="Lightning not installed (pip install .[lightning])")
    proc = run_example("lightning_callback.py", "--steps", "6", "--train-size", "256", "--log-dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "probes:" in proc.stdout
    tags = read_events(tmp_path / "lightning" / "version_0").Tags()
    assert "grad_norm/net.1.weight" in tags["scalars"]
