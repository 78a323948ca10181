"""``train.py --compile`` as a user runs it: a real subprocess (Inductor compiles the model: slow)."""
import pytest

from conftest import read_events, read_summary, run_cli


@pytest.mark.slow
def test_compile_dry_run_trains_logs_and_measures_between_logs(tmp_path):
    """Six steps, logging at 0 and 4: steps 1-3 and 5 run the compiled graph, with the per-step
    probes inside it; no recompilation loop, no warning that the probes were left out."""
    run_dir = tmp_path / "run"
    proc = run_cli("--model", "deep-relu", "--dry-run", "--compile", "--epochs", "3", "--log-every", "4",
                   "--test-size", "100", "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert "recompile_limit" not in proc.stderr and "cache_size_limit" not in proc.stderr, proc.stderr
    assert "no training forward pass" not in proc.stderr and "cannot run inside torch.compile" not in proc.stderr
    summary = read_summary(run_dir)
    assert summary["steps"] == 6
    events = read_events(run_dir)
    assert [e.step for e in events.Scalars("train/loss")] == list(range(6))  # every step's loss, compiled or not
    assert [e.step for e in events.Histograms("grad/layers.0.weight")] == [0, 4]  # logging steps, run eagerly
    # the dead-units hooks counted the compiled steps' examples too (6 steps of 100)
    dead = next(f for f in summary["findings"] if f["id"] == "dead-relu")
    assert {layer["examples"] for layer in dead["evidence"]["layers"].values()} == {6 * 100}
