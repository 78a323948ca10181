"""What every benchmark times: the cnn and its training step as train.py takes it, train.py's
probes, and a fixed set of training batches."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

import models
from experiments.batches import batches, to_float
from experiments.mnist import Split
from models.losses import keras2_crossentropy
from models.optimizers import build_optimizer
from probes import ActivationStats, DeadUnits, GradientStats, InputStats, Monitor, NonFiniteSentinel, OutputStats, watch

from .timing import HookClock

LOSS = keras2_crossentropy  # the cnn's recipe: Keras 2 categorical cross-entropy
DEFAULT_EVERY = 100  # train.py's --log-every default
FIXED_BATCHES = 8  # the most batches any benchmark cycles through (probe overhead)
# train.py's probes for the cnn, in its order (experiments/run.py make_run; the sentinel last)
TRAIN_PY_PROBES = (ActivationStats, GradientStats, DeadUnits, InputStats, OutputStats, NonFiniteSentinel)


def fresh_cnn(device: torch.device, channels_last: Optional[bool] = None):
    """The cnn with seed-0 weights and its recipe's optimizer: (model, optimizer). ``channels_last``
    None: the layout ``models.build`` gives (channels_last); True/False: that layout."""
    torch.manual_seed(0)
    model = models.build("cnn", **({} if channels_last is None else {"channels_last": channels_last})).to(device)
    recipe = models.RECIPES["cnn"]
    return model, build_optimizer(recipe.optimizer, model.parameters(), recipe.lr)


def train_step(model, optimizer, x, y, monitor: Optional[Monitor] = None, end_step: bool = True):
    """One step as train.py takes it (minus data loading): zero_grad, forward, loss, backward, step;
    ``end_step=False`` leaves ``monitor.step`` to the caller (to time it apart)."""
    optimizer.zero_grad(set_to_none=True)
    logits = model(x)
    loss = LOSS(logits, F.one_hot(y, 10).to(logits.dtype)).mean()
    sentinel = monitor.get("nonfinite") if monitor is not None else None
    if sentinel is not None:  # as train.py does: the loss checked before backward
        sentinel.check_loss(loss)
    loss.backward()
    optimizer.step()
    if monitor is not None and end_step:
        monitor.step(loss)
    return loss


def probed(model, log_dir: str, log_every: int, hist_sample="default", clock: Optional[HookClock] = None,
           moments_sample="default") -> Monitor:
    """train.py's probes (:data:`TRAIN_PY_PROBES`: activations, gradients, dead units, the input's
    scale and the output's form, and the non-finite sentinel) with a TensorBoard sink; ``with``
    it, or ``__exit__`` to detach and close. ``hist_sample`` and ``moments_sample`` go to the two
    statistics probes."""
    kw = {} if hist_sample == "default" else {"hist_sample": hist_sample}
    if moments_sample != "default":
        kw["moments_sample"] = moments_sample
    probes = [cls(**kw) if cls in (ActivationStats, GradientStats) else cls() for cls in TRAIN_PY_PROBES]
    if clock is not None:
        for probe in probes:
            clock.wrap(probe)
    return watch(model, log_dir, every=log_every, probes=probes)  # closes its sink on exit


def fixed_batches(split: Split, batch: int, device: torch.device,
                  count: int = FIXED_BATCHES) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """The first ``count`` batches of one seeded shuffle, on ``device``. Made once per device:
    each benchmark takes a prefix of the same list (the batches never change in place)."""
    gen = torch.Generator().manual_seed(1)
    out = []
    for images, labels in batches(split, batch, gen):
        out.append((to_float(images).to(device), labels.to(device)))
        if len(out) == count:
            break
    return out
