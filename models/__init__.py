"""PyTorch ports of the models behind the four questions, and their original recipes.

``MODELS`` maps a name to a constructor; ``build(name)`` returns a fresh module that
returns logits. ``RECIPES`` holds each original's training defaults (optimizer, lr,
batch size, loss, epochs), which ``train.py`` exposes as overridable flags.
``load_keras_weights(model, source)`` puts weights saved by Keras into a port.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict

from torch import nn

from .cnn import KerasCNN
from .deep_mlp import deep_relu, deep_sigmoid
from .dense_mlp import DenseMLP
from .keras_weights import KerasWeightsError, load_keras_weights
from .scaled_conv import ScaledConvNet

MODELS: Dict[str, Callable[..., nn.Module]] = {
    "cnn": KerasCNN,
    "deep-sigmoid": deep_sigmoid,
    "deep-relu": deep_relu,
    "dense-mlp": DenseMLP,
    "scaled-conv": ScaledConvNet,  # ScaledConvNet(variant=1|2|3)
}


@dataclass(frozen=True)
class Recipe:
    """How the original trained the model (Keras 2 / Theano defaults)."""

    optimizer: str
    lr: float
    batch_size: int
    loss: str
    epochs: int
    task: str = "classify"  # which data task feeds the model


RECIPES: Dict[str, Recipe] = {
    # Question 000: Adadelta(lr=1.0), batch 128. Two epochs make test predictions confident
    # enough for exactly-zero gradients to appear (1 epoch is not: ~6e-6 smallest prob).
    "cnn": Recipe(optimizer="adadelta", lr=1.0, batch_size=128, loss="keras", epochs=2),
    # Vanishing gradients: Theano SGD with classic momentum 0.99, lr 0.01, batch 100; Theano's
    # categorical_crossentropy on a softmax has no clip, so it is cross-entropy from logits.
    "deep-sigmoid": Recipe(optimizer="momentum", lr=0.01, batch_size=100, loss="logits", epochs=1),
    "deep-relu": Recipe(optimizer="momentum", lr=0.01, batch_size=100, loss="logits", epochs=1),
    # Frozen first-layer rows: Keras 2 RMSprop(lr=0.001, rho=0.9, epsilon=1e-7), batch 128, Keras 2's
    # clipped categorical_crossentropy.
    "dense-mlp": Recipe(optimizer="rmsprop", lr=0.001, batch_size=128, loss="keras", epochs=1),
    # Reparameterisation: Keras Adam(lr=1e-3, epsilon=1e-7), Keras 2's (clipped) binary cross-entropy
    # per pixel, batch 32 (Keras' fit default); the task is experiments/tasks.py's shifted pixels.
    "scaled-conv": Recipe(optimizer="adam", lr=1e-3, batch_size=32, loss="keras", epochs=1, task="shifted-pixels"),
}


def build(name: str, **kwargs) -> nn.Module:
    """A fresh, freshly initialised model by registry name (``kwargs`` e.g. ``variant=2``)."""
    try:
        return MODELS[name](**kwargs)
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(sorted(MODELS))}") from None
