"""Which study each model gets: the table that joins models/ (what to train) to experiments/
(what to measure and conclude).

models/ cannot hold the studies (it never imports experiments/), so this table is keyed by
the same names as ``models.SPECS``; :func:`check` refuses, on import, a model without a study
or a study without a model, so neither can be added alone. A model with nothing particular
to measure maps to the base :class:`Study`.
"""
from __future__ import annotations

import argparse
from typing import Dict, Iterable, Type

import torch

import models

from .frozen_inputs import FrozenInputsStudy
from .mnist import Split
from .reparam import ReparamStudy
from .study import Study
from .vanishing import VanishingStudy
from .zero_grad_scan import ZeroGradStudy

STUDIES: Dict[str, Type[Study]] = {
    "cnn": ZeroGradStudy,
    "deep-sigmoid": VanishingStudy,
    "deep-relu": VanishingStudy,
    "dense-mlp": FrozenInputsStudy,
    "scaled-conv": ReparamStudy,
}


def check(studies: Iterable[str], specs: Iterable[str]) -> None:
    """Raise unless ``studies`` and ``specs`` name exactly the same models."""
    studies, specs = set(studies), set(specs)
    if studies != specs:
        raise ImportError(f"experiments/studies.py and models/registry.py must name the same models; "
                          f"no study for: {sorted(specs - studies) or 'none'}, "
                          f"no model for: {sorted(studies - specs) or 'none'}")


check(STUDIES, models.SPECS)


def study_for(args: argparse.Namespace, train: Split, test: Split, device: torch.device) -> Study:
    """The study of ``args.model``."""
    return STUDIES[args.model](args, train, test, device)
