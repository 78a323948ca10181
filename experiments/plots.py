"""The questions' figures as PNG bytes, drawn with matplotlib's Agg backend (no display needed).

Each function returns the PNG; the studies write it into the run directory and log it to
TensorBoard with ``sink.image``. probes/ never imports this: plotting is not measuring.
"""
from __future__ import annotations

import io
from typing import Dict, List, Sequence, Tuple

Series = List[Tuple[int, float]]  # (step, value), as MemorySink keeps them


def _pyplot():
    """matplotlib.pyplot on the Agg backend, imported when a figure is drawn: train.py imports
    every study (experiments/studies.py) and its --help or a bad argument should not wait ~0.5 s
    for matplotlib."""
    import matplotlib

    matplotlib.use("Agg")  # before pyplot: draw to memory, never to a window
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()


def _xy(series: Series) -> Tuple[List[int], List[float]]:
    return [s for s, _ in series], [v for _, v in series]


def weight_change_figure(layers: Dict[str, Series], loss: Series, title: str) -> bytes:
    """The vanishing-gradient question's figure: mean |dW| per layer per step, above the cost."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    for i, (name, series) in enumerate(layers.items(), 1):
        top.plot(*_xy(series), label=f"layer {i} ({name})", linewidth=1)
    top.set_yscale("log")
    top.set_ylabel(r"mean $|W_t - W_{t-1}|$")
    top.set_title(title)
    top.legend(fontsize=8)
    bottom.plot(*_xy(loss), color="black", linewidth=1)
    bottom.set_xlabel("step")
    bottom.set_ylabel("cost (training batch)")
    fig.tight_layout()
    return _png(fig)


TITLES = ("first-layer rows never changed", "pixels 0 in every image")


def frozen_inputs_figure(frozen: Sequence[bool], always_zero: Sequence[bool], side: int = 28,
                         titles: Tuple[str, str] = TITLES) -> bytes:
    """Two side x side maps: first-layer rows that never changed, pixels that were always 0."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
    for ax, mask, title in zip(axes, (frozen, always_zero), titles):
        grid = [[float(mask[r * side + c]) for c in range(side)] for r in range(side)]
        ax.imshow(grid, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{title}: {sum(bool(m) for m in mask)}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return _png(fig)


def compare_figure(losses: Dict[str, Series], title: str) -> bytes:
    """Training loss against step, one curve per variant."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (name, series) in enumerate(losses.items()):
        # the third dashed: scaled-conv's variants 2 and 3 train identically and would hide each other
        ax.plot(*_xy(series), label=name, linewidth=1, linestyle=("-", "-", "--")[i % 3])
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (binary cross-entropy)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return _png(fig)


def zero_gradient_figure(log10_prob: Sequence[float], all_zero: Sequence[bool], eps: float, title: str) -> bytes:
    """Where the exactly-zero gradients sit: target probabilities of all (image, target) pairs,
    pairs with an all-zero gradient in red, Keras 2's clip edges as dashed lines."""
    import math

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    zero = [p for p, z in zip(log10_prob, all_zero) if z]
    other = [p for p, z in zip(log10_prob, all_zero) if not z]
    low = min(log10_prob) if len(log10_prob) else -8.0
    bins = [low + (0.5 - low) * i / 60 for i in range(61)]
    ax.hist([other, zero], bins=bins, stacked=True, color=["tab:blue", "tab:red"],
            label=[f"gradient not zero ({len(other)})", f"all-zero gradient ({len(zero)})"])
    for edge in (math.log10(eps), math.log10(1 - eps)):
        ax.axvline(edge, color="black", linestyle="--", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel(r"$\log_{10}$ p(target)  (dashed: the clip at 1e-7 and 1 - 1e-7)")
    ax.set_ylabel("(image, target) pairs")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return _png(fig)
