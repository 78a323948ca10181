"""train.py as a user runs it: a real subprocess, real MNIST, TensorBoard files read back."""
import json

import pytest
import torch

from conftest import mnist_dir, read_events, read_summary, run_cli

SUMMARY_KEYS = {"model", "loss", "epochs", "steps", "test_accuracy", "pair_scan"}
PAIR_SCAN_KEYS = {"pairs", "all_zero", "all_zero_fraction", "eps", "all_zero_iff_target_prob_clipped"}


def test_dry_run_writes_summary_and_tensorboard(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("--model", "cnn", "--dry-run", "--epochs", "2", "--log-every", "1", "--test-size", "100",
                   "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    # logging every step: the run says which statistics are estimated from a sample
    assert "logging every 1 step(s): layer outputs and output gradients of more than 524,288" in proc.stdout
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
    # the data folder came from $MNIST_DIR: args.json keeps it, so `--resume DIR` works in any shell
    assert json.loads((run_dir / "args.json").read_text())["data_dir"] == str(mnist_dir().resolve())


def test_diagnosis_of_a_two_step_run_is_printed_saved_and_in_tensorboard(tmp_path, mnist):
    """The fast suite's diagnosis end to end (test_report's runs check every phenomenon's at
    full length): dense-mlp on 256 images, 2 steps; the frozen first-layer rows are exactly
    the pixels that are 0 in all 256, counted here from the data."""
    run_dir = tmp_path / "run"
    proc = run_cli("--model", "dense-mlp", "--train-size", "256", "--batch-size", "128", "--test-size", "100",
                   "--run-dir", str(run_dir), env_extra={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    summary = read_summary(run_dir)
    (finding,) = [f for f in summary["findings"] if f["id"] == "frozen-by-dead-input"]
    seen = mnist["train"].images[:256].reshape(256, 784)
    always_zero = torch.nonzero((seen == 0).all(0)).flatten().tolist()
    assert finding["evidence"]["input_indices"] == always_zero and finding["evidence"]["relation"] == "equal"
    assert finding["evidence"]["examples_seen"] == 256 and summary["steps"] == 2
    assert "diagnosis:\n[info] frozen-by-dead-input" in proc.stdout
    assert "logging every" not in proc.stdout  # the default interval reads every element: nothing to say
    text = read_events(run_dir).Tensors("findings/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "frozen-by-dead-input" in text


@pytest.mark.slow
def test_keras_loss_gives_zero_gradients_exactly_where_probabilities_are_clipped(confident_cnn_runs):
    summary = read_summary(confident_cnn_runs("keras"))
    scan = summary["pair_scan"]
    assert scan["pairs"] == 3000
    assert scan["all_zero"] > 0, scan
    assert scan["all_zero_iff_target_prob_clipped"] is True, scan
    assert scan["all_zero_but_not_clipped"] == 0 and scan["clipped_but_not_all_zero"] == 0
    (finding,) = [f for f in summary["findings"] if f["id"] == "loss-clipping-zero-grad"]
    assert finding["severity"] == "warning" and finding["evidence"]["all_zero"] == scan["all_zero"]


@pytest.mark.slow
def test_logits_loss_gives_no_zero_gradient_pairs(confident_cnn_runs):
    summary = read_summary(confident_cnn_runs("logits"))
    scan = summary["pair_scan"]
    assert scan["all_zero"] == 0, scan
    assert scan["min_target_prob"] < 1e-7, "the model must be confident for this check to mean anything"
    assert not [f for f in summary["findings"] if f["id"] == "loss-clipping-zero-grad"]


def test_malloc_flag_parses_and_is_applied(tmp_path, monkeypatch):
    import train
    from experiments import allocator

    assert train.parse_args(["--model", "cnn"]).malloc == "reuse"
    assert train.parse_args(["--model", "cnn", "--malloc", "system"]).malloc == "system"
    with pytest.raises(SystemExit) as exited:
        train.parse_args(["--model", "cnn", "--malloc", "jemalloc"])
    assert exited.value.code == 2

    class Reached(Exception):
        pass

    asked = []

    def use(choice):
        asked.append(choice)
        raise Reached  # the run itself is not needed: only that it applies the flag

    monkeypatch.setattr(allocator, "use", use)
    with pytest.raises(Reached):
        train.main(["--model", "dense-mlp", "--dry-run", "--malloc", "system", "--run-dir", str(tmp_path / "run")])
    assert asked == ["system"]


def test_threads_flag_parses_and_is_applied(tmp_path, monkeypatch):
    import train

    assert train.parse_args(["--model", "cnn", "--threads", "3"]).threads == 3
    assert train.parse_args(["--model", "cnn"]).threads is None  # default: experiments/threads.py's rule
    with pytest.raises(SystemExit) as exited:
        train.parse_args(["--model", "cnn", "--threads", "0"])
    assert exited.value.code == 2
    before = torch.get_num_threads()
    try:
        assert train.use_threads(3, show=False).threads == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)

    class Reached(Exception):
        pass

    asked = []

    def use_threads(requested, show=True):
        asked.append(requested)
        raise Reached  # the run itself is not needed: only that it applies the flag

    monkeypatch.setattr(train, "use_threads", use_threads)
    with pytest.raises(Reached):
        train.main(["--model", "dense-mlp", "--dry-run", "--threads", "2", "--run-dir", str(tmp_path / "run")])
    assert asked == [2]
