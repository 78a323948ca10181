"""The diagnosis' calibration corpus (bench/diagnosis.py --quick) runs end to end and meets its
goals: every faulty setup named, no warning on a healthy run."""
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, TIMEOUT, mnist_dir

KEYS = {"named", "faulty", "false_alarms", "healthy"}


@pytest.mark.slow
def test_quick_corpus_names_every_fault_and_raises_no_false_alarm(tmp_path):
    env = dict(os.environ, MNIST_DIR=str(mnist_dir()))
    out = tmp_path / "diagnosis.json"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "diagnosis.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert KEYS <= set(results) and all(isinstance(results[k], int) for k in KEYS)
    setups = results["setups"]
    faulty = [s for s in setups.values() if s["expected"]]
    assert results["faulty"] == sum(s["runs"] for s in faulty) >= len(faulty) >= 15
    assert results["healthy"] == sum(s["runs"] for s in setups.values() if not s["expected"]) >= 10
    missed = {name: s["expected"] for name, s in setups.items() if s["expected"] and s["named"] < 0.9 * s["runs"]}
    assert not missed, missed
    alarms = {name: [r["warnings"] for r in s["detail"]] for name, s in setups.items()
              if not s["expected"] and s["false_alarms"]}
    assert results["false_alarms"] == 0, alarms
    assert results["named"] == results["faulty"] and results["goals_met"] == {"named": True, "false_alarms": True}
    assert "named" in proc.stdout and "false alarms" in proc.stdout  # the printed confusion table
    for s in setups.values():  # every run records the statistics the thresholds are set on
        assert all("rms_grad_first_to_last" in r["measures"] for r in s["detail"])
