"""One study per question: the models a run trains, the probes it adds, the facts it reports.

``train.py`` runs the same loop for every model; a :class:`Study` says what is particular:
which models to build (one, or scaled-conv's three variants side by side), which probes to
attach beyond the common ones, what to do after each epoch (the cnn's pair scan) and what to
conclude at the end (summary facts, one plain sentence, plots).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

import models
from models.optimizers import build_optimizer
from probes import (ActivationStats, DeadUnits, GradientStats, MemorySink, Monitor, NonFiniteSentinel, Prefixed,
                    Probe, Tee)

from .mnist import Split


@dataclass
class Run:
    """One model being trained: its optimizer, its monitor and where its records go.

    ``label`` is "" for a single model, else e.g. "1": then ``sink`` puts ``variant1/`` in
    front of its tags. ``memory`` keeps its scalars (not histograms) for the plots at the end.
    """

    label: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    monitor: Monitor
    sink: Any
    memory: MemorySink
    history: List[Dict[str, float]] = field(default_factory=list)
    net: Optional[nn.Module] = None  # what a training step calls, if not ``model``: its DDP wrapper


def make_run(label: str, model: nn.Module, args: argparse.Namespace, sink: Any, extra: List[Probe]) -> Run:
    """A run of ``model`` with the optimizer of ``args`` and the common probes plus ``extra``;
    last, the non-finite sentinel (``monitor["nonfinite"]``), which train.py stops on."""
    optimizer = build_optimizer(args.optimizer, model.parameters(), args.lr)
    memory = MemorySink(histograms=False)
    run_sink = Tee(Prefixed(sink, f"variant{label}/" if label else ""), memory)
    monitor = Monitor([ActivationStats(), GradientStats(), DeadUnits(), *extra, NonFiniteSentinel()], sink=run_sink,
                      every=args.log_every)
    return Run(label, model, optimizer, monitor, run_sink, memory)


class Study:
    """The default: one model, no extra probes, no facts beyond the common ones."""

    def __init__(self, args: argparse.Namespace, train: Split, test: Split, device: torch.device) -> None:
        self.args, self.train, self.test, self.device = args, train, test, device

    def probes(self) -> List[Probe]:
        return []

    def make_runs(self, sink: Any) -> List[Run]:
        model = models.build(self.args.model).to(self.device)
        return [make_run("", model, self.args, sink, self.probes())]

    def after_epoch(self, runs: List[Run], step: int, sink: Any) -> str:
        """Called after each epoch's evaluation; returns text for the epoch's line (or "")."""
        return ""

    def finish(self, runs: List[Run], run_dir: Path, sink: Any) -> Tuple[Dict[str, Any], str]:
        """Summary facts (merged into summary.json) and one plain-words sentence."""
        return {}, ""


def study_for(args: argparse.Namespace, train: Split, test: Split, device: torch.device) -> Study:
    """The study of ``args.model`` (imported here: each study pulls in its own helpers)."""
    if args.model == "cnn":
        from .zero_grad_scan import ZeroGradStudy as study
    elif args.model in ("deep-sigmoid", "deep-relu"):
        from .vanishing import VanishingStudy as study
    elif args.model == "dense-mlp":
        from .frozen_inputs import FrozenInputsStudy as study
    elif args.model == "scaled-conv":
        from .reparam import ReparamStudy as study
    else:
        study = Study
    return study(args, train, test, device)
