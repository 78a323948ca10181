"""Checkpoints: everything a run needs to go on exactly where it stopped, written atomically.

One file, ``<run-dir>/checkpoint.pt``, replaced at the start of training and after every
epoch: per model its weights, optimizer state, probe states (``Monitor.state_dict``), the
scalars kept for the final plots and the per-epoch history; and the random number
generators (torch's CPU and CUDA generators, which drive init and dropout, the generator
that shuffles the batches, and Python's ``random``; numpy's is not used by training).
A resumed run restores them all, so it computes bit for bit what the uninterrupted run
would have computed.

It is written to a temporary file in the same folder and renamed over the old one
(``os.replace`` is atomic on POSIX), so an interruption while writing leaves the previous
checkpoint whole.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .run import Run

CHECKPOINT = "checkpoint.pt"
FORMAT = 1


class ResumeError(Exception):
    """A run that cannot be resumed, explained in one line."""


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temp file next to ``path``, fsync, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def rng_state(generator: torch.Generator) -> Dict[str, Any]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda, "batch_order": generator.get_state(),
            "python": random.getstate()}


def set_rng_state(state: Dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["batch_order"])
    random.setstate(state["python"])


def save(run_dir: Path, runs: List[Run], epoch: int, generator: torch.Generator) -> None:
    """Checkpoint after ``epoch`` (0: before training). Flush the monitors first, so that
    everything logged up to this point is on disk and a resume discards only later steps."""
    state = {
        "format": FORMAT,
        "epoch": epoch,
        "step": runs[0].monitor.global_step,
        "rng": rng_state(generator),
        "runs": [{"label": r.label, "model": r.model.state_dict(), "optimizer": r.optimizer.state_dict(),
                  "monitor": r.monitor.state_dict(), "memory": {k: list(v) for k, v in r.memory.scalars.items()},
                  "history": list(r.history)} for r in runs],
    }
    atomic_save(state, run_dir / CHECKPOINT)


def load(run_dir: Path, device: torch.device) -> Dict[str, Any]:
    path = run_dir / CHECKPOINT
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise ResumeError(f"{run_dir} has no {CHECKPOINT} (stopped before its first checkpoint, or written by an "
                          f"older train.py); start a new run") from None
    except Exception as exc:  # unpickling errors have many types; the message is what matters
        text = str(exc).strip()
        first = text.splitlines()[0].split(". ")[0] if text else type(exc).__name__
        raise ResumeError(f"{path}: cannot read the checkpoint ({first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ResumeError(f"{path}: not a checkpoint of this train.py")
    return state


def restore_training(state: Dict[str, Any], runs: List[Run]) -> None:
    """Weights, optimizer and probe states, history (after the monitors are attached)."""
    if [r["label"] for r in state["runs"]] != [r.label for r in runs]:
        raise ResumeError("the checkpoint holds other models than this run builds")
    for run, saved in zip(runs, state["runs"]):
        try:
            run.model.load_state_dict(saved["model"])
            run.optimizer.load_state_dict(saved["optimizer"])
            run.monitor.load_state_dict(saved["monitor"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ResumeError(f"the checkpoint does not fit the model: {str(exc).splitlines()[0]}") from None
        run.history[:] = saved["history"]


def restore_streams(state: Dict[str, Any], runs: List[Run], generator: torch.Generator) -> None:
    """The scalars kept for the plots and every random generator: do this last, after
    anything a resume re-logs or recomputes, so that nothing consumes them afterwards."""
    for run, saved in zip(runs, state["runs"]):
        run.memory.scalars.clear()
        run.memory.scalars.update({k: [tuple(v) for v in values] for k, values in saved["memory"].items()})
    set_rng_state(state["rng"], generator)


def resume_args(run_dir: str, model: Optional[str]) -> argparse.Namespace:
    """The arguments a run was started with (its args.json), checked before anything is read
    or written: the directory must be a train.py run of ``model`` (if given) not yet finished."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ResumeError(f"--resume {run_dir}: no such run directory")
    try:
        saved = json.loads((path / "args.json").read_text())
    except FileNotFoundError:
        raise ResumeError(f"--resume {run_dir}: not a run directory of train.py (no args.json)") from None
    except (OSError, ValueError) as exc:
        raise ResumeError(f"--resume {run_dir}: cannot read args.json ({exc})") from None
    if not isinstance(saved, dict) or "model" not in saved or "epochs" not in saved:
        raise ResumeError(f"--resume {run_dir}: args.json is not one train.py wrote")
    if model is not None and saved["model"] != model:
        raise ResumeError(f"--resume {run_dir}: that is a run of --model {saved['model']}, not {model}; "
                          f"leave out --model or resume a {model} run")
    if (path / "summary.json").exists():
        raise ResumeError(f"--resume {run_dir}: that run has finished (summary.json exists)")
    if not (path / CHECKPOINT).exists():
        raise ResumeError(f"--resume {run_dir}: no {CHECKPOINT} (stopped before its first checkpoint, or "
                          f"written by an older train.py); start a new run")
    return argparse.Namespace(**saved)


# With --resume the run's own args.json decides everything else: these may still be given.
RESUME_MAY_GIVE = {"resume", "model", "data_dir", "device", "keep_going", "threads", "malloc"}


def given_options(p: argparse.ArgumentParser, argv: Optional[List[str]]) -> List[str]:
    """The options given on the command line, not defaulted: parse again with every default a
    sentinel (argparse keeps no record of which options it saw)."""
    unset = object()
    saved = {a: a.default for a in p._actions}
    try:
        for action in p._actions:
            action.default = unset
        ns = p.parse_args(argv)
    finally:
        for action, default in saved.items():
            action.default = default
    return [dest for dest, value in vars(ns).items() if value is not unset]
