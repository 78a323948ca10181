"""The questions' figures as PNG bytes, drawn with matplotlib's Agg backend (no display needed).

Each function returns the PNG; the studies write it into the run directory and log it to
TensorBoard with ``sink.image``. probes/ never imports this: plotting is not measuring.

Every figure is 1000 x 600 pixels with fonts that stay legible where TensorBoard shows it
(its image card scales a figure down to roughly half), a legend for every colour, labelled axes
and a title that says what to look at (:func:`readable`).
"""
from __future__ import annotations

import contextlib
import io
import math
from typing import Dict, Iterator, List, Sequence, Tuple

Series = List[Tuple[int, float]]  # (step, value), as MemorySink keeps them

SIZE = (10, 6)  # inches at DPI: 1000 x 600 pixels
DPI = 100
FONTS = {"font.size": 14, "axes.titlesize": 15, "axes.labelsize": 14, "legend.fontsize": 12,
         "xtick.labelsize": 12, "ytick.labelsize": 12, "figure.titlesize": 16}


def _pyplot():
    """matplotlib.pyplot on the Agg backend, imported when a figure is drawn: train.py imports
    every study (experiments/studies.py) and its --help or a bad argument should not wait ~0.5 s
    for matplotlib."""
    import matplotlib

    matplotlib.use("Agg")  # before pyplot: draw to memory, never to a window
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def readable() -> Iterator[None]:
    """Fonts large enough to read at TensorBoard's image size, for what is drawn inside."""
    plt = _pyplot()
    with plt.rc_context(FONTS):
        yield


def _png(fig) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return buffer.getvalue()


def _plain_log_labels(axis) -> None:
    """"2.4" rather than "2.4 x 10^0" on a log axis spanning less than a decade (its minor ticks
    get labels then); a wider axis keeps labels at the powers of ten only."""
    from matplotlib.ticker import LogFormatter

    axis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    axis.set_minor_formatter(LogFormatter(labelOnlyBase=False))


def _xy(series: Series) -> Tuple[List[int], List[float]]:
    return [s for s, _ in series], [v for _, v in series]


def weight_change_figure(layers: Dict[str, Series], loss: Series, title: str) -> bytes:
    """The vanishing-gradient question's figure: mean |dW| per layer per step, above the cost."""
    plt = _pyplot()
    with readable():
        fig, (top, bottom) = plt.subplots(2, 1, figsize=SIZE, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
        for i, (name, series) in enumerate(layers.items(), 1):
            top.plot(*_xy(series), label=f"layer {i} ({name})", linewidth=1.2)
        top.set_yscale("log")
        top.set_ylabel(r"mean $|W_t - W_{t-1}|$")
        top.set_title(f"{title}\nlayer 1 far below the last = the gradient vanishes on its way to the input",
                      fontsize="medium")
        top.legend(loc="best", ncol=2 if len(layers) > 4 else 1)
        top.grid(alpha=0.3)
        bottom.plot(*_xy(loss), color="black", linewidth=1, label="cost")
        bottom.set_xlabel("training step")
        bottom.set_ylabel("cost (batch)")
        bottom.legend(loc="upper right")
        bottom.grid(alpha=0.3)
        fig.tight_layout()
        return _png(fig)


TITLES = ("first-layer rows never changed", "pixels 0 in every image")
OVERLAY = (  # (frozen row, pixel always 0) -> colour, legend
    ((True, True), "#6a3d9a", "both"),
    ((True, False), "#e31a1c", "frozen row only"),
    ((False, True), "#1f78b4", "always-0 pixel only"),
    ((False, False), "#ffffff", "neither"),
)


def frozen_inputs_figure(frozen: Sequence[bool], always_zero: Sequence[bool], side: int = 28,
                         titles: Tuple[str, str] = TITLES) -> bytes:
    """The two side x side maps (first-layer rows that never changed, pixels that were always 0)
    and, on the right, both on one map: the question is whether they are the same pixels."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    plt = _pyplot()
    with readable():
        fig, axes = plt.subplots(1, 3, figsize=(SIZE[0], 5))  # three square maps: less height wasted
        for ax, mask, title, colour in zip(axes, (frozen, always_zero), titles, ("#e31a1c", "#1f78b4")):
            grid = [[float(bool(mask[r * side + c])) for c in range(side)] for r in range(side)]
            ax.imshow(grid, cmap=ListedColormap(["#ffffff", colour]), vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"{title}:\n{sum(bool(m) for m in mask)} of {side * side}", fontsize="medium")
        codes = {key: i for i, (key, _, _) in enumerate(OVERLAY)}
        grid = [[codes[(bool(frozen[r * side + c]), bool(always_zero[r * side + c]))] for c in range(side)]
                for r in range(side)]
        axes[2].imshow(grid, cmap=ListedColormap([c for _, c, _ in OVERLAY]), vmin=0, vmax=len(OVERLAY) - 1,
                       interpolation="nearest")
        pairs = [(bool(f), bool(z)) for f, z in zip(frozen, always_zero)]
        counts = {key: pairs.count(key) for key, _, _ in OVERLAY}
        axes[2].set_title("both maps on one", fontsize="medium")
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f"pixel column (0-{side - 1})", fontsize="small")
        axes[0].set_ylabel(f"pixel row (0-{side - 1})", fontsize="small")
        fig.legend(handles=[Patch(facecolor=c, edgecolor="black", label=f"{label} ({counts[key]})")
                            for key, c, label in OVERLAY], loc="lower center", ncol=4, frameon=False)
        fig.suptitle("First-layer weights of always-0 pixels never change: the two maps should be the same",
                     fontsize="medium")
        fig.tight_layout(rect=(0, 0.07, 1, 1))
        return _png(fig)


def compare_figure(losses: Dict[str, Series], title: str) -> bytes:
    """Training loss against step, one curve per variant."""
    plt = _pyplot()
    with readable():
        fig, ax = plt.subplots(figsize=SIZE)
        for i, (name, series) in enumerate(losses.items()):
            # the third dashed: scaled-conv's variants 2 and 3 train identically and would hide each other
            ax.plot(*_xy(series), label=name, linewidth=1.5, linestyle=("-", "-", "--")[i % 3])
        ax.set_yscale("log")
        _plain_log_labels(ax.yaxis)
        ax.set_xlabel("training step")
        ax.set_ylabel("training loss (binary cross-entropy)")
        ax.set_title(f"{title}\nthe same function, different speed: the parameterisation sets the step size",
                     fontsize="medium")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        return _png(fig)


def clip_bins(low: float, eps: float, width: float = 0.25) -> List[float]:
    """Bin edges over log10 p from below ``low`` to log10(1 - eps), with an edge at exactly
    log10(eps) and the last at exactly log10(1 - eps): no bin straddles the clip, so a pair is
    drawn on the side of the line its probability is on."""
    lo_edge, hi_edge = math.log10(eps), math.log10(1 - eps)
    below = max(math.ceil((lo_edge - min(low, lo_edge)) / width), 1)
    edges = [lo_edge - width * k for k in range(below, 0, -1)] + [lo_edge]
    k = 1
    while lo_edge + width * k < hi_edge - width / 2:
        edges.append(lo_edge + width * k)
        k += 1
    return edges + [hi_edge]


def split_pairs(log10_prob: Sequence[float], all_zero: Sequence[bool], eps: float
                ) -> Tuple[List[float], List[float], List[bool]]:
    """(log10 p of the pairs at or below 1 - eps with a non-zero gradient, the same with an all-zero
    one, the all-zero flags of the pairs above 1 - eps): the main panel's two colours and the tail's."""
    hi_edge = math.log10(1 - eps)
    other = [p for p, z in zip(log10_prob, all_zero) if p <= hi_edge and not z]
    zero = [p for p, z in zip(log10_prob, all_zero) if p <= hi_edge and z]
    return other, zero, [bool(z) for p, z in zip(log10_prob, all_zero) if p > hi_edge]


def _short(x: float) -> str:
    """1e-07 -> "1e-7": the clip as the README writes it."""
    mantissa, _, exponent = f"{x:g}".partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


def zero_gradient_figure(log10_prob: Sequence[float], all_zero: Sequence[bool], eps: float, title: str) -> bytes:
    """Where the exactly-zero gradients sit: target probabilities of all (image, target) pairs,
    pairs with an all-zero gradient in red, Keras 2's clip at eps as a dashed line.

    The pairs above 1 - eps sit within 4e-8 of log10 p = 0, a hairline on any log-p axis: they get
    their own panel on the right, with their counts written on the bars."""
    plt = _pyplot()
    lo_edge = math.log10(eps)
    other, zero, tail = split_pairs(log10_prob, all_zero, eps)
    main = [(p, False) for p in other] + [(p, True) for p in zero]
    low = min(log10_prob) if len(log10_prob) else lo_edge - 1
    colours, e = ["tab:blue", "tab:red"], _short(eps)
    with readable():
        fig, (ax, right) = plt.subplots(1, 2, figsize=SIZE, sharey=True, gridspec_kw={"width_ratios": [5, 1]})
        heights, _, _ = ax.hist([other, zero], bins=clip_bins(low, eps), stacked=True, color=colours,
                                label=[f"gradient not zero ({len(other) + tail.count(False)} pairs)",
                                       f"all-zero gradient ({len(zero) + tail.count(True)} pairs)"])
        ax.axvline(lo_edge, color="black", linestyle="--", linewidth=1.2, label=f"Keras 2's clip at {e}")
        ax.set_yscale("log")
        ax.set_xlabel(r"$\log_{10}$ p(target)")
        ax.set_ylabel("(image, target) pairs")
        ax.legend(loc="upper center", fontsize="small")
        below = [z for p, z in main if p < lo_edge]
        ax.annotate(f"p < {e}:\n{len(below)} pairs,\n{sum(below)} all-zero", xy=(0.02, 0.97),
                    xycoords="axes fraction", va="top", fontsize="small")
        counts = [tail.count(False), tail.count(True)]
        bars = right.bar([0, 1], [max(c, 1e-9) for c in counts], color=colours, width=0.7)
        for bar, count in zip(bars, counts):
            right.annotate(str(count), (bar.get_x() + bar.get_width() / 2, max(count, 1)), ha="center",
                           va="bottom", fontweight="bold")
        right.set_xticks([0, 1])
        right.set_xticklabels(["not 0", "all 0"])
        right.set_xlim(-0.7, 1.7)
        right.set_title(f"p > 1 \u2212 {e}", fontsize="medium")
        top = max([float(max(h)) for h in heights] + counts + [1])
        ax.set_ylim(0.5, top * 30)  # room above the tallest bar for the legend and the counts
        fig.suptitle(f"{title}\nred: all-zero gradient. The clip [{e}, 1 \u2212 {e}] should split red from blue "
                     "exactly", fontsize="medium")
        fig.tight_layout()
        return _png(fig)
