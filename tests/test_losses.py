"""Keras 2's clipped categorical cross-entropy against its formula on hand-computed values."""
import math

import numpy as np
import pytest
import torch

from models.losses import (KERAS_EPSILON, keras2_binary_crossentropy, keras2_crossentropy,
                           keras_categorical_crossentropy, logits_crossentropy, target_probability_clipped)

HI32 = float(np.float32(1) - np.float32(1e-7))  # 0.99999988 in float32


def test_upper_clip_bound_is_float32_one_minus_eps():
    assert HI32 == pytest.approx(0.99999988, abs=1e-9)


@pytest.mark.parametrize("p_target, expected", [
    (0.5, -math.log(0.5)),
    (1e-3, -math.log(1e-3)),
    (1e-7, -math.log(np.float32(1e-7))),  # at the lower edge: not clipped
    (1e-9, -math.log(np.float32(1e-7))),  # below: clipped up to eps
    (0.0, -math.log(np.float32(1e-7))),
    (1.0, -math.log(HI32)),  # above the upper edge: clipped down
])
def test_keras_loss_matches_formula(p_target, expected):
    # two classes so renormalisation is a no-op: p = (p_target, 1 - p_target)
    probs = torch.tensor([[p_target, 1 - p_target]], dtype=torch.float32)
    target = torch.tensor([[1.0, 0.0]])
    loss = keras_categorical_crossentropy(probs, target)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_renormalises_before_clipping():
    probs = torch.tensor([[0.2, 0.2]])  # sums to 0.4 -> (0.5, 0.5)
    loss = keras_categorical_crossentropy(probs, torch.tensor([[0.0, 1.0]]))
    assert loss.item() == pytest.approx(math.log(2), rel=1e-6)


@pytest.mark.parametrize("p_target, zero_grad", [(1e-9, True), (0.3, False), (1e-6, False), (1.0, True)])
def test_gradient_is_exactly_zero_where_clip_is_flat(p_target, zero_grad):
    probs = torch.tensor([[p_target, 1 - p_target]], requires_grad=True)
    keras_categorical_crossentropy(probs, torch.tensor([[1.0, 0.0]])).sum().backward()
    assert bool((probs.grad == 0).all()) is zero_grad


def test_clipped_rule_matches_gradient_on_logits():
    """From logits: a pair has an all-zero logit gradient iff its target probability is clipped."""
    torch.manual_seed(0)
    logits = (torch.randn(400, 10) * 12).requires_grad_(True)
    target = torch.eye(10)[torch.randint(0, 10, (400,))]
    keras2_crossentropy(logits, target).sum().backward()
    zero = (logits.grad == 0).all(1)
    p = torch.softmax(logits.detach(), 1)
    p = p / p.sum(1, keepdim=True)
    clipped = target_probability_clipped((p * target).sum(1))
    assert zero.any() and (~zero).any()
    assert torch.equal(zero, clipped)


def test_logits_loss_never_clips_and_matches_cross_entropy():
    logits = torch.tensor([[30.0, 0.0, -30.0]], requires_grad=True)
    target = torch.tensor([[0.0, 0.0, 1.0]])
    loss = logits_crossentropy(logits, target)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, torch.tensor([2])).item())
    loss.sum().backward()
    assert (logits.grad != 0).any()


def test_binary_keras_loss_clips_like_keras2():
    logits = torch.tensor([40.0, 0.0])
    loss = keras2_binary_crossentropy(logits, torch.tensor([0.0, 1.0]))
    # sigmoid(40) rounds to 1 -> clipped to 1 - eps: loss = -log(1 - (1 - eps)) ~ -log(1.19e-7)
    assert loss[0].item() == pytest.approx(-math.log(1 - HI32), rel=1e-4)
    assert loss[1].item() == pytest.approx(math.log(2), rel=1e-6)
    assert KERAS_EPSILON == 1e-7
