"""Every fenced code block in README.md runs, as written.

- ```python blocks are exec'd here (fast suite), each by the one test that knows what it should
  leave behind: TensorBoard events and a diagnosis, weights read from the Keras file, a
  Lightning fit. Log directories under "runs/" go to a temporary folder and the watch loop
  runs 60 steps instead of 500; nothing else is changed.
- ```bash blocks: every command line runs as a real subprocess (slow suite), in a scratch copy
  of the repository (symlinks) beside a ../shared whose data/mnist is $MNIST_DIR, so relative
  paths and default run directories work as written and land in the temporary folder.
  deep-sigmoid, deep-relu and dense-mlp run to the end (seconds each on idle cores) and must
  show what the README says. Commands too long for CI are checked differently, each named in
  LONG with its reason: the cnn runs and scaled-conv --compare get train.py's --dry-run
  appended (every flag parsed, two steps per epoch, evaluation, pair scan, summary);
  report.py runs until its first training run has started and is then stopped. Setup segments (venv, activate, pip install) are not rerun: the test
  runs inside that install. `bash .ci/run` is CI itself: running it from a test would recurse.
- ```text blocks (file lists, output samples) are not run.

A block in another language (or none), a python block no test claims, or a command this file
does not know how to run fails the fast suite.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import REPO, TIMEOUT, mnist_dir, read_events, read_summary

README = (REPO / "README.md").read_text()
BLOCKS = [(m.group(1), m.group(2)) for m in re.finditer(r"^```([^\n]*)\n(.*?)^```[ \t]*$", README, re.M | re.S)]
LANGUAGES = {"python", "bash", "text"}

# A python block is claimed by the test whose marker it contains.
PYTHON_MARKERS = {"probes.watch(": "test_watch_loop_block", "load_keras_weights(": "test_keras_weights_block",
                  "ProbeCallback(": "test_lightning_block"}

# Command (as written) -> why it is not run to the end here, and what is run instead.
CNN_FULL = "2 epochs of 469 steps plus two 1,000-image pair scans: over 10 minutes on 2 cores; run with --dry-run"
SCALED_CONV = ("3 variants x 200 steps, 84 s on 2 idle cores and many times that on busy ones; run with --dry-run "
               "(tests/test_phenomena.py checks its result on a smaller budget)")
LONG = {
    "MNIST_DIR=../shared/data/mnist python train.py --model scaled-conv --compare --train-size 6400 --test-size 1000":
        SCALED_CONV,
    "MNIST_DIR=../shared/data/mnist python train.py --model cnn": CNN_FULL,
    "MNIST_DIR=../shared/data/mnist python train.py --model cnn --loss logits": CNN_FULL,
    "MNIST_DIR=../shared/data/mnist torchrun --nproc_per_node=2 train.py --model cnn": CNN_FULL + ", on 2 processes",
    "MNIST_DIR=../shared/data/mnist python report.py --quick":
        "six training runs, 5 to 12 minutes, and tests/test_report.py runs it in full; stopped once its first run starts",
}
SETUP = ("python -m venv", ". .venv/bin/activate", "source .venv/bin/activate", "pip install", "python -m pip install")
NOT_RUN = {"bash .ci/run": "CI itself, which runs this test: running it here would recurse"}


def blocks(language: str) -> list:
    return [code for lang, code in BLOCKS if lang == language]


def segments(code: str) -> list:
    """The commands of a bash block: lines joined at trailing backslashes, comments dropped,
    split at && and ;. Each command is its text, normalised to single spaces."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        command: list = []
        for token in list(lexer) + [";"]:
            if token in ("&&", ";"):
                if command:
                    out.append(" ".join(command))
                command = []
            elif token in ("|", "||", "&", ">", "<", ">>"):
                raise ValueError(f"README command with {token!r}: this test runs plain commands only: {line}")
            else:
                command.append(token)
    return out


def kind(command: str) -> str:
    """setup, not-run, train, report or torchrun; ValueError for anything else."""
    if command.startswith(SETUP):
        return "setup"
    if command in NOT_RUN:
        return "not-run"
    words = [w for w in command.split() if not re.match(r"^[A-Z_][A-Z0-9_]*=", w)]
    if words[:2] == ["python", "train.py"]:
        return "train"
    if words[:2] == ["python", "report.py"]:
        return "report"
    if words[0] == "torchrun" and "train.py" in words:
        return "torchrun"
    raise ValueError(f"README command this test does not know how to run: {command}")


COMMANDS = list(dict.fromkeys(c for code in blocks("bash") for c in segments(code)))
RUNNABLE = [c for c in COMMANDS if kind(c) in ("train", "report", "torchrun")]


# -- fast: every block is accounted for ----------------------------------------------------

def test_every_block_has_a_language_this_test_handles():
    assert BLOCKS, "no fenced code block found in README.md"
    unknown = [(lang, code[:60]) for lang, code in BLOCKS if lang not in LANGUAGES]
    assert not unknown, f"README blocks this test does not run (python and bash run, text is skipped): {unknown}"
    assert README.count("```") == 2 * len(BLOCKS), "an unbalanced ``` fence in README.md"


def test_every_python_block_is_claimed_by_one_test():
    for code in blocks("python"):
        claimed = [test for marker, test in PYTHON_MARKERS.items() if marker in code]
        assert len(claimed) == 1, f"README python block claimed by {claimed}; add a test for it:\n{code}"


def test_every_bash_command_is_known_and_every_exception_is_still_in_the_readme():
    kinds = {c: kind(c) for c in COMMANDS}  # raises on a command nobody runs
    assert "train" in kinds.values() and "not-run" in kinds.values()
    for command in (c for c in COMMANDS if kinds[c] == "setup" and " -r " in c):
        assert (REPO / command.split(" -r ")[1].split()[0]).is_file(), command
    for command in [*LONG, *NOT_RUN]:
        assert command in COMMANDS, f"stale exception in test_readme.py, not in README.md: {command}"


# -- fast: the python blocks ---------------------------------------------------------------

def block_with(marker: str) -> str:
    (code,) = [code for code in blocks("python") if marker in code]
    return code


def run_block(code: str) -> dict:
    namespace: dict = {"__name__": "readme"}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


def test_watch_loop_block(tmp_path, capsys):
    """The first screen's loop: events written, the monitor detached, a diagnosis printed."""
    import probes

    code = block_with("probes.watch(")
    assert '"runs/mine"' in code and "range(500)" in code
    ns = run_block(code.replace('"runs/mine"', repr(str(tmp_path / "mine"))).replace("range(500)", "range(60)"))
    monitor = ns["monitor"]
    assert monitor.global_step == 60 and monitor.model is None
    assert isinstance(ns["findings"], list) and all(isinstance(f, probes.Finding) for f in ns["findings"])
    assert capsys.readouterr().out.startswith("probes: 60 steps measured; diagnosis")
    scalars = read_events(tmp_path / "mine").Tags()["scalars"]
    assert "train/loss" in scalars and "weight_change/0.weight" in scalars


def test_keras_weights_block(monkeypatch):
    """Paths are relative to the repository root, as every command in the README."""
    import numpy as np
    import torch

    monkeypatch.chdir(REPO)
    ns = run_block(block_with("load_keras_weights("))
    path = re.search(r'"([^"]+\.npz)"', block_with("load_keras_weights(")).group(1)
    keras = np.load(path)
    conv1 = ns["model"].conv1
    assert torch.equal(conv1.bias.detach(), torch.from_numpy(keras["w1"]))
    assert torch.equal(conv1.weight.detach(), torch.from_numpy(keras["w0"]).permute(3, 2, 0, 1))


def test_lightning_block(tmp_path, monkeypatch):
    """Its logger writes under runs/ of the working directory: a temporary one here."""
    pytest.importorskip("lightning")
    monkeypatch.chdir(tmp_path)
    ns = run_block(block_with("ProbeCallback("))
    assert isinstance(ns["findings"], list)
    assert ns["callback"].monitor.global_step == 2 * 2048 // 64
    (version,) = (tmp_path / "runs" / "lightning_logs").iterdir()
    assert "train/loss" in read_events(version).Tags()["scalars"]


# -- slow: the bash commands ---------------------------------------------------------------

def scratch_repo(tmp_path: Path) -> Path:
    """tmp/main: symlinks to the repository's files; tmp/shared/data/mnist: $MNIST_DIR (and the
    Keras fixtures where the repository has them), so ../shared/... resolves as in a checkout."""
    main = tmp_path / "main"
    main.mkdir()
    for entry in REPO.iterdir():
        if not entry.name.startswith(".") and entry.name not in ("runs", "report", "data", "build", "dist"):
            (main / entry.name).symlink_to(entry)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "mnist").symlink_to(mnist_dir().resolve())
    fixtures = REPO.parent / "shared" / "fixtures"
    if fixtures.exists():
        (tmp_path / "shared" / "fixtures").symlink_to(fixtures)
    return main


def argv_and_env(command: str) -> tuple:
    words = shlex.split(command)
    env = dict(os.environ, MNIST_DIR=str(mnist_dir()), PYTHONUNBUFFERED="1")
    while re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    program = {"python": [sys.executable], "torchrun": [sys.executable, "-m", "torch.distributed.run"]}[words[0]]
    return program + words[1:], env


@pytest.mark.slow
@pytest.mark.parametrize("command", RUNNABLE, ids=[c.replace("MNIST_DIR=../shared/data/mnist ", "") for c in RUNNABLE])
def test_bash_command_runs_as_written(command, tmp_path):
    main = scratch_repo(tmp_path)
    argv, env = argv_and_env(command)
    if kind(command) == "report":
        return check_report_starts(argv, env, main)
    if command in LONG:
        argv.append("--dry-run")
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=main, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run_dir,) = (main / "runs").iterdir()  # train.py's default run directory
    summary = read_summary(run_dir)
    assert isinstance(summary["findings"], list) and read_events(run_dir).Tags()["scalars"]
    if command in LONG:
        return
    # Run to the end: what the README says the run shows.
    model = argv[argv.index("--model") + 1]
    expected = {"deep-sigmoid": "vanishing-gradient", "dense-mlp": "frozen-by-dead-input",
                "scaled-conv": "update-ratio-imbalance"}
    figure = {"deep-sigmoid": "weight_change.png", "deep-relu": "weight_change.png",
              "dense-mlp": "frozen_inputs.png", "scaled-conv": "loss_by_variant.png"}[model]
    assert (run_dir / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ids = {f["id"] for f in summary["findings"]}
    if model in expected:
        assert expected[model] in ids, summary["findings"]
    else:  # deep-relu: the healthy contrast
        assert "vanishing-gradient" not in ids, summary["findings"]
    if model == "dense-mlp":
        assert summary["frozen_inputs"]["relation"] == "equal"


def check_report_starts(argv: list, env: dict, main: Path) -> None:
    """report.py as written until its first training run has started, then stopped."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=main)
    watchdog = threading.Timer(TIMEOUT, proc.kill)
    watchdog.start()
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("[report 1/"):
                break
    finally:
        proc.kill()
        proc.wait()
        watchdog.cancel()
    assert seen and seen[-1].startswith("[report 1/"), "".join(seen)[-3000:]
    assert "python train.py --model" in seen[-1] and "--run-dir report/runs/" in seen[-1]
