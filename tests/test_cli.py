"""train.py as a user runs it: a real subprocess, real MNIST, TensorBoard files read back."""
import pytest

from conftest import read_events, read_summary, run_cli

SUMMARY_KEYS = {"model", "loss", "epochs", "steps", "test_accuracy", "pair_scan"}
PAIR_SCAN_KEYS = {"pairs", "all_zero", "all_zero_fraction", "eps", "all_zero_iff_target_prob_clipped"}


def test_dry_run_writes_summary_and_tensorboard(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("--model", "cnn", "--dry-run", "--epochs", "2", "--log-every", "1", "--test-size", "100",
                   "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    summary = read_summary(run_dir)
    assert SUMMARY_KEYS <= summary.keys() and PAIR_SCAN_KEYS <= summary["pair_scan"].keys()
    assert summary["model"] == "cnn" and summary["loss"] == "keras" and summary["steps"] == 4
    assert summary["pair_scan"]["eps"] == 1e-07
    events = read_events(run_dir)
    scalars, hists = set(events.Tags()["scalars"]), set(events.Tags()["histograms"])
    assert {"train/loss", "grad_norm/conv1.weight", "grad_zero_fraction/fc2.bias", "activation_zero_fraction/relu1",
            "epoch/test_accuracy", "pair_scan/all_zero_fraction", "output_grad_norm/fc2"} <= scalars
    assert {"grad/conv1.weight", "activations/bn3", "output_grad/conv2", "pair_scan/log10_target_prob"} <= hists
    assert [e.step for e in events.Scalars("train/loss")] == [0, 1, 2, 3]
    assert [e.step for e in events.Histograms("grad/fc1.weight")] == [0, 1, 2, 3]
    assert "summary" in "".join(events.Tags()["tensors"])  # the plain-words text


# Reaching confident predictions cheaply: 1,024 images, batch 32, 28 epochs = 896 steps
# (BatchNorm's moving averages need several hundred steps at Keras' momentum 0.99).
CONFIDENT = ["--train-size", "1024", "--batch-size", "32", "--epochs", "28", "--test-size", "500",
             "--scan-images", "300", "--scan-norm-images", "0", "--log-every", "200"]


def test_keras_loss_gives_zero_gradients_exactly_where_probabilities_are_clipped(tmp_path):
    proc = run_cli("--model", "cnn", "--loss", "keras", *CONFIDENT, "--run-dir", str(tmp_path / "k"))
    assert proc.returncode == 0, proc.stderr
    scan = read_summary(tmp_path / "k")["pair_scan"]
    assert scan["pairs"] == 3000
    assert scan["all_zero"] > 0, scan
    assert scan["all_zero_iff_target_prob_clipped"] is True, scan
    assert scan["all_zero_but_not_clipped"] == 0 and scan["clipped_but_not_all_zero"] == 0


def test_logits_loss_gives_no_zero_gradient_pairs(tmp_path):
    proc = run_cli("--model", "cnn", "--loss", "logits", *CONFIDENT, "--run-dir", str(tmp_path / "l"))
    assert proc.returncode == 0, proc.stderr
    scan = read_summary(tmp_path / "l")["pair_scan"]
    assert scan["all_zero"] == 0, scan
    assert scan["min_target_prob"] < 1e-7, "the model must be confident for this check to mean anything"
