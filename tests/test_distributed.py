"""train.py on two processes (torchrun, gloo on CPU) logs what one process logs over the same data.

Compared on deep-relu: no dropout and no BatchNorm, so two processes, each taking half of
every batch with DDP averaging the gradients, train exactly the model one process trains on
the whole batch (up to float summation order). With dropout or BatchNorm they would not: each
rank draws its own dropout masks and normalises its half with its half's statistics. The cnn
run checks the rest of the issue on the model it names: it trains under DDP and its pair scan
covers every scan image, not one rank's share; tests/distributed_worker.py checks, on fixed
inputs, that the gathered pair scan and the reduced records equal one process's.

Tolerances: scalars (loss, zero fractions, norms, weight changes) to 1e-5 relative, float32
sums in another order; histograms' min, max, count and sum of squares the same, their sum to
1e-5 of its scale; bucket counts within one bucket on average (probes/distributed.py re-bins
each rank's buckets onto the global range, each count landing at most one bucket away).
Small data, a few steps, one thread per process: the shared CI machine has two cores.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, TIMEOUT, mnist_dir, read_events, read_summary, run_cli

COMMON = ["--train-size", "192", "--batch-size", "64", "--test-size", "100", "--log-every", "1"]
THREADS = {"OMP_NUM_THREADS": "1"}


def torchrun(*args: str, cwd, timeout: int = TIMEOUT):
    """``torchrun --standalone --nproc_per_node=2 train.py ARGS`` with this interpreter (free port)."""
    env = {**os.environ, **THREADS, "MNIST_DIR": str(mnist_dir())}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "train.py"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def close(a: float, b: float, rel: float = 1e-5, scale: float = 0.0) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), scale) + 1e-12


def assert_same_events(one, two):
    assert set(one.Tags()["scalars"]) == set(two.Tags()["scalars"])
    assert set(one.Tags()["histograms"]) == set(two.Tags()["histograms"])
    for tag in one.Tags()["scalars"]:
        a, b = one.Scalars(tag), two.Scalars(tag)
        assert [e.step for e in a] == [e.step for e in b], tag
        for x, y in zip(a, b):
            assert close(x.value, y.value), (tag, x.step, x.value, y.value)
    for tag in one.Tags()["histograms"]:
        a, b = one.Histograms(tag), two.Histograms(tag)
        assert [e.step for e in a] == [e.step for e in b], tag
        for x, y in zip(a, b):
            h1, h2 = x.histogram_value, y.histogram_value
            for field in ("min", "max", "num", "sum_squares"):
                assert close(getattr(h1, field), getattr(h2, field)), (tag, x.step, field)
            assert close(h1.sum, h2.sum, scale=(h1.num * h1.sum_squares) ** 0.5), (tag, x.step, "sum")
            c1, c2 = np.array(h1.bucket), np.array(h2.bucket)
            assert abs(c1.sum() - c2.sum()) <= 1e-6 * h1.num, (tag, x.step)
            # Earth mover's distance in buckets: how far counts moved, summed; at most one each.
            assert np.abs(np.cumsum(c1) - np.cumsum(c2)).sum() <= h1.num, (tag, x.step)


@pytest.mark.slow
def test_two_processes_log_what_one_process_logs(tmp_path):
    args = ["--model", "deep-relu", "--epochs", "2", *COMMON]
    one = run_cli(*args, "--run-dir", str(tmp_path / "one"), env_extra=THREADS)
    assert one.returncode == 0, one.stderr
    work = tmp_path / "work"  # the ranks' working directory: nothing may appear in it
    work.mkdir()
    two = torchrun(*args, "--run-dir", str(tmp_path / "two"), cwd=work)
    assert two.returncode == 0, two.stderr[-3000:]

    events_one, events_two = read_events(tmp_path / "one"), read_events(tmp_path / "two")
    assert [e.step for e in events_two.Scalars("train/loss")] == list(range(6))  # 3 steps x 2 epochs
    assert_same_events(events_one, events_two)
    s1, s2 = read_summary(tmp_path / "one"), read_summary(tmp_path / "two")
    assert s1["steps"] == s2["steps"] == 6
    assert s1["test_accuracy"] == s2["test_accuracy"]
    for h1, h2 in zip(s1["history"], s2["history"]):  # epoch means: summed over ranks
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            assert close(h1[key], h2[key]), key
    assert all(close(a, b) for a, b in zip(s1["weight_change"]["mean_abs_dw"], s2["weight_change"]["mean_abs_dw"]))

    # Only rank 0 wrote: the same files as one process, one event file, nothing elsewhere.
    assert sorted(p.name for p in (tmp_path / "two").iterdir() if not p.name.startswith("events")) == \
        sorted(p.name for p in (tmp_path / "one").iterdir() if not p.name.startswith("events"))
    assert len(list((tmp_path / "two").glob("events.out.tfevents.*"))) == 1
    assert list(work.iterdir()) == []
    assert two.stdout.count("run directory:") == 1  # the other rank prints nothing


@pytest.mark.slow
def test_cnn_trains_on_two_processes_and_scans_every_image(tmp_path):
    run_dir = tmp_path / "cnn"
    proc = torchrun("--model", "cnn", "--epochs", "1", *COMMON, "--scan-images", "10", "--scan-norm-images", "7",
                    "--run-dir", str(run_dir), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = read_summary(run_dir)
    assert summary["steps"] == 3
    assert summary["pair_scan"]["pairs"] == 10 * 10  # both ranks' five images, gathered on rank 0
    events = read_events(run_dir)
    (target_prob,) = events.Histograms("pair_scan/log10_target_prob")
    assert target_prob.histogram_value.num == 100
    (norms,) = events.Histograms("pair_scan_grad_norm/fc2")
    assert norms.histogram_value.num == 7 * 10  # rank 0's five images and two of rank 1's
    assert len(events.Scalars("grad_zero_fraction/conv1.weight")) == 3
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1


@pytest.mark.slow
def test_sharded_pair_scan_and_reductions_match_one_process(tmp_path):
    """tests/distributed_worker.py on 2 processes vs the same computations here on all the data."""
    import torch

    from distributed_worker import inputs
    from models.losses import LOSSES
    from probes.pair_scan import pair_scan
    from probes.stats import histogram, norm, zero_fraction

    out = tmp_path / "ranks.pt"
    env = {**os.environ, **THREADS}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "tests" / "distributed_worker.py"), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(out)

    model, images, values = inputs()
    scan = pair_scan(model, images, LOSSES["keras"]["categorical"], norms_for=5)  # rank 0 has 4 images
    torch.testing.assert_close(got["logits"], scan.logits)
    assert torch.equal(got["all_zero"], scan.all_zero)
    assert got["norms"].keys() == scan.layer_norms.keys()
    for layer, norms in scan.layer_norms.items():
        assert norms.shape == (5, 10)
        torch.testing.assert_close(got["norms"][layer], norms)
    torch.testing.assert_close(got["zero_fraction"], zero_fraction(values))
    # output gradients of the mean of the ranks' losses: each rank's own / 2
    torch.testing.assert_close(got["output_grad_norm"], norm(values) / 2)
    torch.testing.assert_close(got["grad_norm"], norm(values))
    expected = histogram(values)
    for field in ("min", "max", "num", "sum", "sum_squares", "bucket_limits"):
        torch.testing.assert_close(got["hist"][expected._fields.index(field)], getattr(expected, field))
    counts = got["hist"][-1]
    assert counts.sum() == expected.bucket_counts.sum()
    assert (counts.cumsum(0) - expected.bucket_counts.cumsum(0)).abs().sum() <= expected.num  # <= 1 bucket each
    # dead units over both ranks' examples: rank 0 alone saw unit 1 as dead too
    from distributed_worker import relu_net_and_rows
    from probes import DeadUnits

    net, rows = relu_net_and_rows()
    with DeadUnits().attach(net) as one:
        net(rows)
    assert got["dead_units"] == one.summary() == {
        "layers": {"1": {"units": 4, "dead": 2, "dead_units": [2, 3], "examples": 4}}}


def test_slices_cover_every_example_and_weights_make_the_batch_mean():
    """No processes needed: the arithmetic train.py relies on, for an uneven last batch too."""
    import torch

    from experiments.distributed import Context, bounds
    from experiments.mnist import DataError

    for n in (64, 65, 3):
        cuts = [bounds(n, 2, r) for r in range(2)]
        assert cuts[0][0] == 0 and cuts[0][1] == cuts[1][0] and cuts[1][1] == n
        losses = torch.rand(n, generator=torch.Generator().manual_seed(n))
        per_rank = [Context(r, 2).rank_loss(losses[a:b].mean(), b - a, n) for r, (a, b) in enumerate(cuts)]
        torch.testing.assert_close(sum(per_rank) / 2, losses.mean())  # what DDP's averaging optimises
    with pytest.raises(DataError, match="last batch of 1"):
        Context(0, 2).check_batches(129, 64)
    Context(0, 2).check_batches(130, 64)
