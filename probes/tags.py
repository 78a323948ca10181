"""The names under which probes log, built here and read back here.

A tag is ``<kind>/<name>``: a statistic (``grad_norm``) of a layer or parameter, named as the
model names it (``fc1.weight``). A module called more than once in a forward pass gets
``name#1``, ``name#2``... for its later calls. Probes build tags with :func:`tag`, the
diagnosis and the plots read series with :func:`series`: nothing else splits tag strings.
"""
from __future__ import annotations

from typing import Dict, Mapping, Sequence, Tuple, TypeVar

LOSS = "train/loss"
# the mean, smallest and largest loss of the steps between two logs, kept by the monitor at the log
LOSS_WINDOW_MEAN = "train/loss_window_mean"
LOSS_WINDOW_MIN = "train/loss_window_min"
LOSS_WINDOW_MAX = "train/loss_window_max"

ACTIVATIONS = "activations"
ACTIVATION_ZERO_FRACTION = "activation_zero_fraction"
ACTIVATION_SATURATED_FRACTION = "activation_saturated_fraction"
GRAD = "grad"
GRAD_ZERO_FRACTION = "grad_zero_fraction"
GRAD_NORM = "grad_norm"
OUTPUT_GRAD = "output_grad"
OUTPUT_GRAD_ZERO_FRACTION = "output_grad_zero_fraction"
OUTPUT_GRAD_NORM = "output_grad_norm"
UPDATE_GRAD_NORM = "update_grad_norm"
UPDATE_NORM = "update_norm"
UPDATE_RATIO = "update_ratio"
WEIGHT_CHANGE = "weight_change"

T = TypeVar("T")


def tag(kind: str, name: str) -> str:
    """The tag of statistic ``kind`` of layer or parameter ``name``."""
    return f"{kind}/{name}"


def call_name(name: str, call: int) -> str:
    """``name`` for a module's first call in a forward pass, ``name#k`` for its (k+1)-th."""
    return name if call == 0 else f"{name}#{call}"


def module_name(name: str) -> str:
    """The module's own name of a call name (``name#k`` -> ``name``)."""
    return name.split("#", 1)[0]


def series(values: Mapping[str, T], kind: str) -> Dict[str, T]:
    """``{name: value}`` of every entry of ``values`` (keyed by tag) whose statistic is ``kind``.

    Works on ``MemorySink.scalars`` (``{tag: [(step, value), ...]}``) or anything keyed by tag.
    """
    prefix = kind + "/"
    return {t[len(prefix):]: v for t, v in values.items() if t.startswith(prefix)}


def split(tag_: str) -> Tuple[str, str]:
    """(kind, name) of a tag; for sinks that group charts by statistic."""
    kind, _, name = tag_.partition("/")
    return kind, name


Series = Sequence[Tuple[int, float]]
