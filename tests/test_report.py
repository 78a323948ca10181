"""Issue 4's "Must show": ``python report.py --quick`` end to end, and its runs as the evidence
that each phenomenon gets the right finding with the numbers behind it and that the healthy
contrasts (cnn --loss logits, deep-relu) get no warning. One module-scoped run of the report
serves every test here, to spare the CPU."""
import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO, TIMEOUT, mnist_dir, read_events

pytestmark = pytest.mark.slow  # report --quick trains six models: minutes (test_cli has a fast diagnosis run)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    proc = subprocess.run([sys.executable, str(REPO / "report.py"), "--quick", "--out", str(out),
                           "--data-dir", str(mnist_dir())], capture_output=True, text=True, cwd=REPO, timeout=TIMEOUT)
    summaries = {p.parent.name: json.loads(p.read_text()) for p in (out / "runs").glob("*/summary.json")}
    return proc, out, summaries


def findings(summary, severity=None):
    return [f for f in summary["findings"] if severity is None or f["severity"] in severity]


def only(summary, fid):
    (f,) = [f for f in summary["findings"] if f["id"] == fid]
    return f


def test_report_quick_says_reproduced_for_all_four(quick):
    proc, out, summaries = quick
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (out / "REPORT.md").read_text()
    rows = [line for line in report.splitlines()
            if line.startswith("| ") and "phenomenon" not in line and "---" not in line]
    assert len(rows) == 4 and all(row.endswith("| yes |") for row in rows), rows
    for png in ("deep-sigmoid-weight_change.png", "dense-mlp-frozen_inputs.png", "scaled-conv-loss_by_variant.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png})" in report
    assert "[report 1/6]" in proc.stdout  # progress while it runs
    assert set(summaries) == {"cnn", "cnn-logits", "deep-sigmoid", "deep-relu", "dense-mlp", "scaled-conv"}


def test_cnn_keras_loss_zero_gradients_are_blamed_on_the_clip(quick):
    cnn = quick[2]["cnn"]
    f = only(cnn, "loss-clipping-zero-grad")
    scan = cnn["pair_scan"]
    assert f["severity"] == "warning" and f["evidence"]["all_zero"] == scan["all_zero"] > 0
    assert f["evidence"]["all_zero_iff_target_prob_clipped"] is True and f["evidence"]["eps"] == 1e-7
    assert f"{scan['all_zero']} of {scan['pairs']}" in f["message"]
    assert "clip" in f["cause"] and "--loss logits" in f["fix"]


def test_deep_sigmoid_vanishing_gradient_with_numbers_per_layer(quick):
    sig = quick[2]["deep-sigmoid"]
    f = only(sig, "vanishing-gradient")
    ev = f["evidence"]
    assert ev["layers"] == ["layers.0.weight", "layers.2.weight", "layers.4.weight", "layers.6.weight"]
    assert ev["median_grad_norm"] == sorted(ev["median_grad_norm"]) and ev["falls_towards_input"]
    assert ev["first_to_last_grad_norm_ratio"] < 0.1  # measured 0.011 on these 20 steps
    assert ev["mean_abs_dw"] == sig["weight_change"]["mean_abs_dw"] and ev["first_to_last_dw_ratio"] < 0.05
    assert "grad_norm_ratio" in ev["rules"]


def test_healthy_runs_get_no_warning(quick):
    summaries = quick[2]
    for name in ("cnn-logits", "deep-relu"):
        assert findings(summaries[name], ("warning", "error")) == [], name
    assert summaries["cnn-logits"]["pair_scan"]["all_zero"] == 0
    assert not [f for f in summaries["deep-relu"]["findings"] if f["id"] == "vanishing-gradient"]


def test_dense_mlp_frozen_rows_are_dead_inputs_not_dead_relus(quick, mnist):
    summary = quick[2]["dense-mlp"]
    f = only(summary, "frozen-by-dead-input")
    seen = mnist["train"].images[:2000].reshape(2000, 784)
    always_zero = torch.nonzero((seen == 0).all(0)).flatten().tolist()  # from the data, independently
    ev = f["evidence"]
    assert ev["input_indices"] == always_zero and ev["relation"] == "equal" and ev["frozen_not_explained"] == []
    assert ev["first_layer"] == "fc1.weight" and ev["examples_seen"] == 2000
    assert all(d["severity"] == "info" for d in summary["findings"] if d["id"] == "dead-relu")
    assert "not dead ReLUs" in f["message"]


def test_scaled_conv_update_ratios_orders_of_magnitude_apart(quick):
    summary = quick[2]["scaled-conv"]
    f = only(summary, "update-ratio-imbalance")
    ev = f["evidence"]
    ratio = {v: summary["variants"][v]["update_ratio"]["mean_update_ratio"][-1] for v in ("1", "2", "3")}
    assert ev["layer"] == "conv2.weight" and ev["spread"] >= 10
    assert ev["mean_update_ratio"]["variant 1"] == ratio["1"] and ev["mean_update_ratio"]["variant 2"] == ratio["2"]
    assert ev["spread"] == pytest.approx(ratio["1"] / ratio["2"])


def test_findings_are_printed_and_in_tensorboard(quick):
    proc, out, _ = quick
    assert "diagnosis:\n[warning] vanishing-gradient" in proc.stdout
    events = read_events(out / "runs" / "deep-sigmoid")
    assert "findings/text_summary" in events.Tags()["tensors"]
    text = events.Tensors("findings/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "vanishing-gradient" in text
