"""train.py --compile: compiled steps between probe logs, eager logging steps."""
import pytest

from conftest import read_events, read_summary, run_cli


@pytest.mark.slow  # compiling takes ~20-40 s on 2 cores
def test_compile_runs_and_logs_the_probes(tmp_path):
    run_dir = tmp_path / "r"
    proc = run_cli("--model", "cnn", "--dry-run", "--compile", "--log-every", "2", "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_summary(run_dir)["steps"] == 4
    histograms = read_events(run_dir).Tags()["histograms"]
    assert "activations/conv1" in histograms and "grad/fc1.weight" in histograms
