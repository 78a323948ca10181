"""PyTorch ports of the models behind the four questions, and their original recipes.

``SPECS`` (models/registry.py) holds one entry per model: constructor, recipe, help line.
``build(name)`` returns a fresh module that returns logits. ``MODELS`` (name -> constructor)
and ``RECIPES`` (name -> each original's optimizer, lr, batch size, loss, epochs, which
``train.py`` exposes as overridable flags) are views of ``SPECS``.
``load_keras_weights(model, source)`` puts weights saved by Keras into a port.
"""
from __future__ import annotations

from typing import Callable, Dict

from torch import nn

from .cnn import KerasCNN
from .deep_mlp import deep_relu, deep_sigmoid
from .dense_mlp import DenseMLP
from .keras_weights import KerasWeightsError, load_keras_weights
from .registry import SPECS, ModelSpec, Recipe
from .scaled_conv import ScaledConvNet

MODELS: Dict[str, Callable[..., nn.Module]] = {name: spec.constructor for name, spec in SPECS.items()}
RECIPES: Dict[str, Recipe] = {name: spec.recipe for name, spec in SPECS.items()}


def build(name: str, **kwargs) -> nn.Module:
    """A fresh, freshly initialised model by registry name (``kwargs`` e.g. ``variant=2``)."""
    try:
        return MODELS[name](**kwargs)
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(sorted(MODELS))}") from None
