"""The benchmark runs end to end (tiny sizes) and writes its fixed keys."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, TIMEOUT, mnist_dir

FIXED_KEYS = {"probe_overhead_default", "probe_overhead_every_step", "peak_rss_ratio", "pair_flags_speedup_vs_loop",
              "pair_norms_vs_batched", "train_vs_bare_loop", "train_gflops_fraction_of_matmul",
              "probe_overhead_small_model", "port_vs_plain_torch"}
# measured unless torch.compile fails here, which the run then reports instead of a figure
COMPILE_KEYS = {"compile_probe_overhead_default", "compile_speedup_with_probes"}
GOALS = {"probe_overhead_small_model": "<= 1.1", "port_vs_plain_torch": "<= 1.05",
         "compile_probe_overhead_default": "<= 1.05", "compile_speedup_with_probes": ">= 1.3",
         "train_vs_keras": ">= 1.3"}


def keras_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("tensorflow", "keras"))


@pytest.mark.slow
def test_smoke_run_writes_results_with_the_fixed_keys(tmp_path):
    env = dict(os.environ, MNIST_DIR=str(mnist_dir()))
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert FIXED_KEYS <= set(results)
    assert all(isinstance(results[k], float) and results[k] > 0 for k in FIXED_KEYS)
    assert {"machine", "torch", "date", "malloc"} <= set(results)
    for key in FIXED_KEYS:  # each figure comes with its spread
        assert results["spread"][key]["min"] <= results[key] <= results["spread"][key]["max"]
    assert results["details"]["cpu"]["pair_scan"]["norms_method"] == "closed-form"
    report = (tmp_path / "RESULTS.md").read_text()
    assert "shared" in report and "| goal |" in report
    assert "probe_overhead_every_step" in proc.stdout  # the printed table
    for key, text in GOALS.items():
        assert results["goals"][key]["goal"] == text
    # issue 14's ratios: at one thread and at torch's default count, the headline the worse of them
    cpu = results["details"]["cpu"]
    threads = sorted({1, results["threads_default"]})
    for section, key in (("small_model", "probe_overhead_small_model"), ("port_speed", "port_vs_plain_torch"),
                         ("compiled_probes", "compile_probe_overhead_default")):
        assert sorted(int(n) for n in cpu[section]["by_threads"]) == threads
    for key in COMPILE_KEYS:  # a figure, or no figure and the failure said
        if results[key] is None:
            assert results["goals"][key]["met"] is None and "failed" in results["skipped"][key]
        else:
            assert results["spread"][key]["min"] <= results[key] <= results["spread"][key]["max"]
            assert isinstance(results["goals"][key]["met"], bool)
    compiled = cpu["compiled_probes"]["by_threads"]["1"]["by_order"]["attach_then_compile"]
    assert "error" in compiled or compiled["graphs_compiled_in_all"] >= 1
    if keras_installed():
        assert results["train_vs_keras"] is not None or "failed" in results["skipped"]["train_vs_keras"]
    else:  # skipped, and said so: in results.json, the printed table and RESULTS.md
        assert results["train_vs_keras"] is None and results["goals"]["train_vs_keras"]["met"] is None
        assert "skipped" in results["skipped"]["train_vs_keras"] and "keras-bench" in results["skipped"]["train_vs_keras"]
        assert "train_vs_keras" in proc.stdout and "skipped" in proc.stdout
        assert "skipped" in report


def test_report_of_a_growth_trace_too_short_for_a_line(tmp_path):
    """A run whose growth trace has no point to fit (too few steps) still gets its RESULTS.md."""
    results = json.loads((REPO / "bench" / "results.json").read_text())
    results["details"]["cpu"]["memory"].update(rss_trace_mb=[], growth_mb=None, rss_band_mb=None, growth_from_step=None)
    (tmp_path / "results.json").write_text(json.dumps(results))
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "results_report.py"), str(tmp_path / "results.json")],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "0 points to fit a line through: too few" in (tmp_path / "RESULTS.md").read_text()


def _spread(median):
    return {"median": median, "min": median * 0.98, "max": median * 1.02, "n": 3}


def test_a_ratio_not_measured_is_reported_with_its_reason():
    """train_vs_keras without TensorFlow and a torch.compile that failed: no figure, and the reason in
    results.json, the printed table and RESULTS.md; the ratios that were measured keep their figures."""
    from bench.results import assemble, table
    from bench.results_report import write_report
    from bench.sizes import SIZES

    old = json.loads((REPO / "bench" / "results.json").read_text())
    cpu = old["details"]["cpu"]
    small = {"probe_overhead_small_model": _spread(1.5), "train_py_probes_ratio": _spread(1.2),
             "step_seconds": {k: _spread(v) for k, v in (("bare", 1e-3), ("all_probes", 1.5e-3),
                                                         ("train_py_probes", 1.2e-3))}}
    cpu["small_model"] = {"by_threads": {"1": small}, "probe_overhead_small_model": _spread(1.5),
                          "probe_overhead_small_model_threads": 1, "method": "m"}
    port = {"port_vs_plain_torch": _spread(0.97), "port_vs_plain_channels_last": _spread(1.01),
            "step_seconds": {k: _spread(0.3) for k in ("port", "plain", "plain_channels_last")}}
    cpu["port_speed"] = {"by_threads": {"1": port}, "port_vs_plain_torch": _spread(0.97), "method": "m"}
    failed = "BackendCompilerFailed: no C compiler found"
    cpu["compiled_probes"] = {"by_threads": {"1": {"by_order": {"attach_then_compile": {"error": failed}},
                                                   "error": f"attach_then_compile: {failed}"}},
                              "compile_probe_overhead_default": None, "compile_speedup_with_probes": None,
                              "error": f"1 thread(s): attach_then_compile: {failed}", "method": "m"}
    why = "tensorflow and keras not installed in this environment; pip install .[keras-bench] to measure it"
    cpu["keras"] = {"train_vs_keras": None, "skipped": why}
    results = assemble(old["details"], "quick", SIZES["quick"], 0.0, 1.0, 1)

    assert results["port_vs_plain_torch"] == 0.97 and results["goals"]["port_vs_plain_torch"]["met"] is True
    assert results["probe_overhead_small_model"] == 1.5
    assert results["goals"]["probe_overhead_small_model"]["met"] is False  # unmet, and said so
    assert results["train_vs_keras"] is None and results["goals"]["train_vs_keras"]["met"] is None
    assert results["skipped"]["train_vs_keras"] == f"skipped: {why}"
    for key in ("compile_probe_overhead_default", "compile_speedup_with_probes"):
        assert results[key] is None and failed in results["goals"][key]["why"]
    json.dumps(results)  # results.json stays plain JSON
    printed = table(results)
    assert f"skipped: {why}" in printed and "no C compiler" in printed
    report = write_report(results)
    assert f"skipped: {why}" in report and failed in report
    assert "`probe_overhead_small_model` 1.500 (goal <= 1.1: **not met**" in report
