"""One entry per model: how to build it, how the original trained it, and one line for ``--help``.

``SPECS`` is the only list of the models: ``models.MODELS`` and ``models.RECIPES`` are views
of it, train.py's ``--model`` choices, per-flag defaults and model list are read from it, and
report.py trains one run per entry. The study of each model (what a run measures and concludes)
belongs to experiments/, which this package never imports: experiments/studies.py maps the same
names to their studies and refuses, on import, a name that is missing on either side.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict

from torch import nn

from .cnn import KerasCNN
from .deep_mlp import deep_relu, deep_sigmoid
from .dense_mlp import DenseMLP
from .scaled_conv import ScaledConvNet


@dataclass(frozen=True)
class Recipe:
    """How the original trained the model (Keras 2 / Theano defaults)."""

    optimizer: str
    lr: float
    batch_size: int
    loss: str
    epochs: int
    task: str = "classify"  # which data task feeds the model (experiments/tasks.py)


@dataclass(frozen=True)
class ModelSpec:
    """A registered model. ``constructor(**kwargs)`` returns a fresh module that returns logits."""

    name: str
    constructor: Callable[..., nn.Module]
    recipe: Recipe
    help: str  # one line: what the model is and which question it answers


def _by_name(*specs: ModelSpec) -> Dict[str, ModelSpec]:
    """``{name: spec}`` in the order given; a name given twice is an error, not a silent overwrite."""
    table: Dict[str, ModelSpec] = {}
    for spec in specs:
        if spec.name in table:
            raise ValueError(f"model {spec.name!r} is registered twice")
        table[spec.name] = spec
    return table


SPECS: Dict[str, ModelSpec] = _by_name(
    # Question 000: Adadelta(lr=1.0), batch 128. Two epochs make test predictions confident
    # enough for exactly-zero gradients to appear (1 epoch is not: ~6e-6 smallest prob).
    ModelSpec("cnn", KerasCNN, Recipe(optimizer="adadelta", lr=1.0, batch_size=128, loss="keras", epochs=2),
              help="Keras' MNIST CNN: exactly-zero gradients from Keras 2's clip"),
    # Vanishing gradients: Theano SGD with classic momentum 0.99, lr 0.01, batch 100; Theano's
    # categorical_crossentropy on a softmax has no clip, so it is cross-entropy from logits.
    ModelSpec("deep-sigmoid", deep_sigmoid,
              Recipe(optimizer="momentum", lr=0.01, batch_size=100, loss="logits", epochs=1),
              help="784-1000-750-500-10 sigmoid MLP: vanishing gradients"),
    ModelSpec("deep-relu", deep_relu, Recipe(optimizer="momentum", lr=0.01, batch_size=100, loss="logits", epochs=1),
              help="the same MLP with ReLU: the healthy contrast to deep-sigmoid"),
    # Frozen first-layer rows: Keras 2 RMSprop(lr=0.001, rho=0.9, epsilon=1e-7), batch 128, Keras 2's
    # clipped categorical_crossentropy.
    ModelSpec("dense-mlp", DenseMLP, Recipe(optimizer="rmsprop", lr=0.001, batch_size=128, loss="keras", epochs=1),
              help="784-512-512-10 ReLU MLP: first-layer weights that never change"),
    # Reparameterisation: Keras Adam(lr=1e-3, epsilon=1e-7), Keras 2's (clipped) binary cross-entropy
    # per pixel, batch 32 (Keras' fit default); the task is experiments/tasks.py's shifted pixels.
    ModelSpec("scaled-conv", ScaledConvNet,  # ScaledConvNet(variant=1|2|3)
              Recipe(optimizer="adam", lr=1e-3, batch_size=32, loss="keras", epochs=1, task="shifted-pixels"),
              help="one conv net, three parameterisations (--variant, --compare)"),
)
