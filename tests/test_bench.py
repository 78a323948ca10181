"""The benchmark runs end to end (tiny sizes) and writes its fixed keys."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, TIMEOUT, mnist_dir

FIXED_KEYS = {"probe_overhead_default", "probe_overhead_every_step", "peak_rss_ratio", "pair_flags_speedup_vs_loop",
              "pair_norms_vs_batched", "train_vs_bare_loop", "train_gflops_fraction_of_matmul"}


@pytest.mark.slow
def test_smoke_run_writes_results_with_the_fixed_keys(tmp_path):
    env = dict(os.environ, MNIST_DIR=str(mnist_dir()))
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert FIXED_KEYS <= set(results)
    assert all(isinstance(results[k], float) and results[k] > 0 for k in FIXED_KEYS)
    assert {"machine", "torch", "date"} <= set(results)
    for key in FIXED_KEYS:  # each figure comes with its spread
        assert results["spread"][key]["min"] <= results[key] <= results["spread"][key]["max"]
    assert results["details"]["cpu"]["pair_scan"]["norms_method"] == "closed-form"
    report = (tmp_path / "RESULTS.md").read_text()
    assert "shared" in report and "| goal |" in report
    assert "probe_overhead_every_step" in proc.stdout  # the printed table


def test_report_of_a_growth_trace_too_short_for_a_line(tmp_path):
    """A run whose growth trace has no point to fit (too few steps) still gets its RESULTS.md."""
    results = json.loads((REPO / "bench" / "results.json").read_text())
    results["details"]["cpu"]["memory"].update(rss_trace_mb=[], growth_mb=None, rss_band_mb=None, growth_from_step=None)
    (tmp_path / "results.json").write_text(json.dumps(results))
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "results_report.py"), str(tmp_path / "results.json")],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "0 points to fit a line through: too few" in (tmp_path / "RESULTS.md").read_text()
