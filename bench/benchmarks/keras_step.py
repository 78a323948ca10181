"""train.py's cnn step against the question's own Keras model (optional: needs TensorFlow/Keras).

Only when ``tensorflow`` and ``keras`` import (``pip install .[keras-bench]``, never a
requirement); otherwise the run records that it skipped this and why. Keras runs in a child
process of its own (``python -m bench.benchmarks.keras_step``, this module): TensorFlow's thread
pools are fixed when it starts, so each thread count needs its own process, and its memory stays
apart from torch's. The child builds the same model (Conv64-ReLU-BN x2, MaxPool, Dropout,
Dense128-ReLU-BN, Dropout, Dense10 softmax; Adadelta lr 1, rho 0.95, eps 1e-7;
``categorical_crossentropy``), takes the same MNIST batches in NHWC, and on each line ``run N``
from the parent times ``N`` ``train_on_batch`` calls. The parent alternates those windows with
windows of train.py's step (the cnn, Keras 2's loss, Adadelta, train.py's probes at the default
interval), so load from other processes falls on both.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Dict, List, Optional

import torch

KEY = "train_vs_keras"
REPO = Path(__file__).resolve().parents[2]


def keras_missing() -> Optional[str]:
    """Why the Keras comparison cannot run here, or None when it can."""
    missing = [name for name in ("tensorflow", "keras") if importlib.util.find_spec(name) is None]
    if missing:
        return (f"{' and '.join(missing)} not installed in this environment ({sys.executable}); "
                "pip install .[keras-bench] to measure it")
    return None


# -- the child process ------------------------------------------------------------------

def keras_child(args: argparse.Namespace) -> None:
    """Build the Keras cnn at ``args.threads`` threads, warm it up, then answer ``run N`` lines
    with the seconds of N train_on_batch calls (one JSON list a line) until ``quit``."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    import keras
    from keras import layers

    sys.path.insert(0, str(REPO))
    from bench.workload import fixed_batches
    from experiments.mnist import load_mnist

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(64, 3, activation="relu"), layers.BatchNormalization(),
        layers.Conv2D(64, 3, activation="relu"), layers.BatchNormalization(),
        layers.MaxPooling2D(2), layers.Dropout(0.5), layers.Flatten(),
        layers.Dense(128, activation="relu"), layers.BatchNormalization(), layers.Dropout(0.5),
        layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.Adadelta(learning_rate=1.0, rho=0.95, epsilon=1e-7),
                  loss="categorical_crossentropy")
    data = load_mnist(allow_download=False)
    xs = [(x.permute(0, 2, 3, 1).contiguous().numpy(), np.eye(10, dtype=np.float32)[y.numpy()])
          for x, y in fixed_batches(data["train"], args.batch, torch.device("cpu"))]
    for x, y in xs[:2]:  # the first call traces and compiles the training function
        model.train_on_batch(x, y)
    print(json.dumps({"ready": True, "keras": keras.__version__, "tensorflow": tf.__version__}), flush=True)
    at = 0
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            break
        seconds: List[float] = []
        for _ in range(int(words[1])):
            x, y = xs[at % len(xs)]
            at += 1
            start = time.perf_counter()
            model.train_on_batch(x, y)
            seconds.append(time.perf_counter() - start)
        print(json.dumps(seconds), flush=True)


# -- the benchmark ----------------------------------------------------------------------

class KerasChild:
    """The child process at one thread count, driven line by line."""

    def __init__(self, threads: int, batch: int) -> None:
        path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=path, KERAS_BACKEND="tensorflow",
                   TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")  # Keras on the CPU, as the torch side
        self.stderr = tempfile.TemporaryFile(mode="w+")  # TensorFlow's chatter: a pipe could fill and block it
        self.proc = subprocess.Popen([sys.executable, "-m", __name__, "--threads", str(threads), "--batch", str(batch)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr,
                                     text=True, env=env, cwd=str(REPO))
        self.info = self._read()

    def _read(self):
        """The child's next JSON line (any other line on its stdout is skipped)."""
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait()
                self.stderr.seek(0)
                raise RuntimeError(f"the Keras child process ended: {self.stderr.read()[-1500:].strip()}")
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue

    def run(self, steps: int) -> List[float]:
        self.proc.stdin.write(f"run {steps}\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=60)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()


def train_vs_keras(xs, device: torch.device, sizes, tmp: str, counts: List[int], log) -> Dict:
    """Keras step / train.py's step at each thread count (the worse is the headline); or the
    reason it was skipped."""
    from ..timing import at_thread_counts, spread
    from ..workload import DEFAULT_EVERY, fresh_cnn, probed, train_step

    why = keras_missing()
    if why is not None:
        log(f"train_vs_keras: skipped ({why})")
        return {KEY: None, "skipped": why}
    if device.type != "cpu":
        return {KEY: None, "skipped": "measured on the CPU only"}

    def measure(n: int) -> Dict:
        try:
            child = KerasChild(n, sizes.batch)
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {str(exc)[-500:]}"}
        model, opt = fresh_cnn(device)
        monitor = probed(model, f"{tmp}/keras-{n}", DEFAULT_EVERY)
        at = {"i": 0}

        def torch_window() -> List[float]:
            seconds = []
            for _ in range(sizes.keras_window):
                x, y = xs[at["i"] % len(xs)]
                at["i"] += 1
                start = time.perf_counter()
                train_step(model, opt, x, y, monitor=monitor)
                seconds.append(time.perf_counter() - start)
            return seconds

        try:
            torch_window()  # warm-up (step 0 logs)
            ratios, keras_s, torch_s = [], [], []
            for r in range(sizes.repeats):
                pair = [("keras", lambda: child.run(sizes.keras_window)), ("torch", torch_window)]
                got = dict((name, fn()) for name, fn in (pair if r % 2 == 0 else pair[::-1]))
                k, t = median(got["keras"]), median(got["torch"])
                keras_s.append(k)
                torch_s.append(t)
                ratios.append(k / t)
        except Exception as exc:
            return {"error": f"{type(exc).__name__}: {str(exc)[-500:]}"}
        finally:
            child.close()
            monitor.__exit__()
        out = {KEY: spread(ratios), "step_seconds": {"keras": spread(keras_s), "train_py": spread(torch_s)},
               "versions": {k: v for k, v in child.info.items() if k != "ready"}}
        log(f"train_vs_keras at {n} thread(s): Keras step {out['step_seconds']['keras']['median']} s, train.py's "
            f"{out['step_seconds']['train_py']['median']} s: {out[KEY]['median']}x")
        return out

    out = at_thread_counts(measure, counts, KEY, higher_is_better=True)
    out.update(batch=sizes.batch, method=(
        f"{sizes.repeats} repeats, each one window of {sizes.keras_window} Keras train_on_batch calls (child process, "
        "TensorFlow intra/inter-op threads = the thread count) and one of train.py's step (the cnn, Keras 2's loss, "
        f"Adadelta, train.py's probes every {DEFAULT_EVERY} steps), order alternating; ratio = median Keras step / "
        "median train.py step within each repeat"))
    return out


def child_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="the Keras side of bench/run.py's train_vs_keras, in a process of its own")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=128)
    return p.parse_args(argv)


if __name__ == "__main__":
    keras_child(child_args())
