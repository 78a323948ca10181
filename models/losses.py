"""Losses with the exact semantics of the Keras versions the questions used.

Our models return logits; the softmax (or sigmoid) lives here, so one model serves both
semantics:

* ``keras2`` / ``keras`` -- Keras 2's ``categorical_crossentropy`` on probabilities, the
  question's. Keras 2 (``keras/backend/tensorflow_backend.py``) renormalises the
  probabilities, clips them to ``[eps, 1 - eps]`` with ``eps = K.epsilon() = 1e-7`` and
  takes ``-sum(y * log p)``. The clip has zero derivative outside that range, so every pair
  whose target probability is below 1e-7 (or above 1 - 1e-7, which is 0.99999988 in
  float32) gets an exactly-zero gradient.
* ``keras3`` / ``logits`` -- what Keras 3 and tf.keras in graph mode actually compute for
  ``loss="categorical_crossentropy"`` behind a softmax output: they notice the softmax and
  use its logits, i.e. softmax cross-entropy from logits, with no clipping, so the same
  model trained there shows no zero gradients. Keras 3's softmax caches its input on the
  output tensor (``_keras_logits``) and the loss takes it (``tf.nn.softmax_cross_entropy_with_logits``
  on TensorFlow); tf.keras 2.x does so for a symbolic tensor whose op is ``Softmax``, i.e. inside
  ``fit``'s graph, while an eager call on probabilities still gets the clipped formula.

Measured with real Keras 3.15 (``shared/fixtures/keras``): the question's CNN after 2 epochs
has an exactly-zero gradient for 20.5% of 10,000 (test image, target) pairs under Keras 2's
clipped loss and for 0% under Keras 3's own. On Keras' weights these two functions reproduce
Keras' per-example losses and gradients (``tests/test_keras_weights.py``: losses within
3.7e-6, gradients within 2.0e-5 relative, float32).

Both return one loss per example; the caller takes the mean as Keras does.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, Dict, Tuple

import torch
import torch.nn.functional as F

KERAS_EPSILON = 1e-7  # keras.backend.epsilon()

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def clip_bounds(dtype: torch.dtype = torch.float32) -> tuple:
    """The clip interval as Keras 2 builds it in ``dtype`` (1 - 1e-7 rounds to 0.99999988)."""
    eps = torch.tensor(KERAS_EPSILON, dtype=dtype)
    return eps, 1 - eps


@lru_cache(maxsize=None)
def _clip_floats(dtype: torch.dtype) -> Tuple[float, float]:
    """:func:`clip_bounds` as Python floats, made once per dtype: the losses run every step, and
    building two tensors and reading them back (``.item()``) each time costs more than the clip."""
    lo, hi = clip_bounds(dtype)
    return lo.item(), hi.item()


def keras_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax followed by Keras 2's renormalisation ``p /= sum(p)``: the p that gets clipped."""
    p = torch.softmax(logits, dim=-1)
    return p / p.sum(dim=-1, keepdim=True)


def keras_categorical_crossentropy(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Keras 2 ``categorical_crossentropy(target, output)`` on probabilities, per example."""
    probs = probs / probs.sum(dim=-1, keepdim=True)
    lo, hi = _clip_floats(probs.dtype)
    probs = torch.clamp(probs, lo, hi)
    return -(target * torch.log(probs)).sum(dim=-1)


def keras2_crossentropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The question's loss: softmax output, then Keras 2's clipped cross-entropy."""
    return keras_categorical_crossentropy(torch.softmax(logits, dim=-1), target)


def logits_crossentropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Numerically sound softmax cross-entropy from logits (Keras 3's behaviour)."""
    return -(target * torch.log_softmax(logits, dim=-1)).sum(dim=-1)


def keras2_binary_crossentropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Keras 2 ``binary_crossentropy`` on a sigmoid output, per element.

    Keras 2 clips the probability to [eps, 1 - eps], turns it back into a logit with
    ``log(p / (1 - p))`` and calls ``sigmoid_cross_entropy_with_logits``.
    """
    lo, hi = _clip_floats(logits.dtype)
    p = torch.clamp(torch.sigmoid(logits), lo, hi)
    return F.binary_cross_entropy_with_logits(torch.log(p / (1 - p)), target, reduction="none")


def logits_binary_crossentropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy from logits, per element, no clipping."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none")


# name -> (categorical loss, binary loss). "keras" and "logits" are the CLI's names;
# "keras2"/"keras3" say which Keras version behaves that way.
LOSSES: Dict[str, Dict[str, LossFn]] = {
    "keras": {"categorical": keras2_crossentropy, "binary": keras2_binary_crossentropy},
    "logits": {"categorical": logits_crossentropy, "binary": logits_binary_crossentropy},
}
LOSSES["keras2"] = LOSSES["keras"]
LOSSES["keras3"] = LOSSES["logits"]


def target_probability_clipped(target_prob: torch.Tensor) -> torch.Tensor:
    """Where Keras 2's clip is flat: p < eps or p > 1 - eps (in the probability's dtype)."""
    lo, hi = clip_bounds(target_prob.dtype)
    return (target_prob < lo) | (target_prob > hi)
