"""What a run does beyond the common loop: the :class:`Study` base that each question's study extends.

``train.py`` runs the same loop for every model; a study says what is particular: which
models to build (one, or scaled-conv's three variants side by side), which probes to attach
beyond the common ones, which charts answer its question (pinned first on TensorBoard's
Custom Scalars tab), what to measure at each logging step and after each epoch (the cnn's
pair scan) and what to conclude at the end (summary facts, one plain sentence, plots).
experiments/studies.py says which study each model gets.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

import models
from probes import Probe
from probes.layout import Category
from probes.sinks import Sink, pin

from .mnist import Split
from .run import Run, make_run


class Study:
    """The default: one model, no extra probes, no facts beyond the common ones."""

    #: The PNG :meth:`finish` writes into the run directory ("" for none); report.py copies it
    #: next to REPORT.md.
    figure = ""

    def __init__(self, args: argparse.Namespace, train: Split, test: Split, device: torch.device) -> None:
        self.args, self.train, self.test, self.device = args, train, test, device

    def probes(self) -> List[Probe]:
        return []

    def make_runs(self, sink: Sink) -> List[Run]:
        model = models.build(self.args.model).to(self.device)
        return [make_run("", model, self.args, sink, self.probes())]

    def dashboard(self, runs: List[Run]) -> List[Category]:
        """The question's own charts, shown before gradient flow and the rest (none here)."""
        return []

    def pin_dashboard(self, runs: List[Run], sink: Sink) -> None:
        """Put :meth:`dashboard` first in ``sink``'s custom-scalars layout (a TensorBoard sink's)."""
        categories = self.dashboard(runs)
        if categories:
            pin(sink, *categories)

    def after_step(self, runs: List[Run], sink: Sink) -> None:
        """Called between training steps; calls :meth:`after_log` after a logging step."""
        monitor = runs[0].monitor
        step = monitor.global_step - 1
        if step >= 0 and monitor.schedule(step):
            self.after_log(runs, step, sink)

    def after_log(self, runs: List[Run], step: int, sink: Sink) -> None:
        """Measure what the question needs as a curve, at the probes' logging steps (nothing here)."""

    def after_epoch(self, runs: List[Run], step: int, sink: Sink) -> str:
        """Called after each epoch's evaluation; returns text for the epoch's line (or "")."""
        return ""

    def finish(self, runs: List[Run], run_dir: Path, sink: Sink) -> Tuple[Dict[str, Any], str]:
        """Summary facts (merged into summary.json) and one plain-words sentence."""
        return {}, ""
