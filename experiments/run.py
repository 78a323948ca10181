"""One model being trained (:class:`Run`) and how train.py sets one up (:func:`make_run`).

Its own module so that everything that handles runs (checkpoint, stopping, findings, the
studies) can import it without importing the studies.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from torch import nn

from models.optimizers import build_optimizer
from probes import (ActivationStats, DeadUnits, GradientStats, InputStats, MemorySink, Monitor, NonFiniteSentinel,
                    OutputStats, Prefixed, Probe, Tee)
from probes.sinks import Sink


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
    sink: Sink
    memory: MemorySink
    history: List[Dict[str, float]] = field(default_factory=list)
    net: Optional[nn.Module] = None  # what a training step calls, if not ``model``: its DDP wrapper


def make_run(label: str, model: nn.Module, args: argparse.Namespace, sink: Sink, extra: List[Probe]) -> Run:
    """A run of ``model`` with the optimizer of ``args`` and the common probes (the input's scale and
    the output's form for the diagnosis among them) plus ``extra``; last, the non-finite sentinel
    (``monitor["nonfinite"]``), which train.py stops on."""
    optimizer = build_optimizer(args.optimizer, model.parameters(), args.lr)
    memory = MemorySink(histograms=False)
    run_sink = Tee(Prefixed(sink, f"variant{label}/" if label else ""), memory)
    monitor = Monitor([ActivationStats(), GradientStats(), DeadUnits(), InputStats(), OutputStats(), *extra,
                       NonFiniteSentinel()], sink=run_sink, every=args.log_every)
    return Run(label, model, optimizer, monitor, run_sink, memory)
