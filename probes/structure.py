"""The facts about a model's layout that the diagnosis needs besides the probes' numbers.

A gradient norm of a whole tensor grows with the square root of its size, so comparing two
layers needs each parameter's element count; "the layers below a dead ReLU" needs the order of
the layers. :func:`describe` reads both off the module once (at attach, or from a model given
to :func:`probes.diagnose`), as plain Python values that go into summary.json as they are.
"""
from __future__ import annotations

from typing import Any, Dict, List

from torch import nn

from .base import unwrap


def describe(model: nn.Module) -> Dict[str, Any]:
    """``weights``: trainable weight matrices (``dim >= 2``), input first (registration order);
    ``sizes``: element count of every trainable parameter; ``layers``: ``[name, type, [its
    parameters]]`` of every leaf module, in registration order."""
    model = unwrap(model)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    layers: List[list] = []
    for name, module in model.named_modules():
        if any(True for _ in module.children()):
            continue
        own = [f"{name}.{n}" if name else n for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        layers.append([name or type(module).__name__, type(module).__name__, own])
    return {"weights": [n for n, p in params if p.dim() >= 2], "sizes": {n: p.numel() for n, p in params},
            "layers": layers}


def below(structure: Dict[str, Any], layer: str) -> List[str]:
    """The weight matrices registered before ``layer`` (a leaf module's name): those between
    it and the input in a model that registers its layers in the order it calls them."""
    names = [entry[0] for entry in structure.get("layers", [])]
    if layer not in names:
        return []
    earlier = {p for entry in structure["layers"][:names.index(layer)] for p in entry[2]}
    return [w for w in structure.get("weights", []) if w in earlier]
