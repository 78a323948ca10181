"""The gradient-flow picture: per layer, input to output, how much gradient arrives at each logging step.

This is the view people draw by hand for "are my gradients flowing?": one bar per layer's weight
(RMS gradient, max |gradient|, exact-zero fraction), input on the left. A layer whose bar sits
orders of magnitude below its neighbours learns that much slower (vanishing); a zero fraction
near 1 means most of its weights get no gradient at all (the cnn's clipped pairs, dead units).

The numbers are not measured again: :class:`GradientFlowSink` wraps the run's sink and reads the
host records the monitor already writes at a logging step (``grad/<param>`` histograms carry the
exact num, sum of squares, min and max; ``grad_zero_fraction/<param>`` the zero fraction), so
probes/ stays on torch only and a step that does not log costs nothing. It adds, per model
(``variant1/`` etc. for scaled-conv's --compare):

- ``gradient_flow``: the picture, a PNG through ``sink.image`` (also the last one in
  ``<run dir>/gradient_flow.png`` when given a path);
- ``gradient_flow/rms``, ``gradient_flow/max_abs``, ``gradient_flow/zero_fraction``: the same
  profiles as TensorBoard histograms whose buckets are the layers in model order (bucket i spans
  [i, i+1), its height is layer i's value), so the Histograms tab draws the profile over time and
  the Distributions tab where along the depth the gradient sits.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from probes import tags
from probes.records import HostHistogram, HostScalar
from probes.sinks import HostRecord, Sink

#: TensorBoard's histogram views re-bin every histogram into this many equal buckets over the
#: range of all its steps (tensorboard 2.21 frontend); the layer buckets are laid out so that
#: each layer covers a whole number of them and keeps its own height.
TB_BINS = 30
FLOW = "gradient_flow"
STATISTICS = ("rms", "max_abs", "zero_fraction")


@dataclass
class LayerFlow:
    """One parameter's gradient at a logging step."""

    name: str
    rms: float
    max_abs: float
    zero_fraction: float


def _split_prefix(tag: str, kind: str) -> Optional[Tuple[str, str]]:
    """(prefix, parameter) of a ``[prefix]kind/param`` tag, or None when the tag is another statistic.
    The prefix is "" or e.g. "variant1/" (experiments/run.py's :class:`probes.Prefixed`)."""
    marker = kind + "/"
    if tag.startswith(marker):
        return "", tag[len(marker):]
    head, sep, rest = tag.partition("/" + marker)
    if sep and "/" not in head:
        return head + "/", rest
    return None


def layer_flows(records: Sequence[HostRecord], order: Sequence[str] = ()) -> Dict[str, Tuple[int, List[LayerFlow]]]:
    """``{prefix: (step, layers)}`` from one logging step's host records, layers input to output.

    Only weights (biases left out, as in the hand-drawn plot: they follow their weight). The order
    is ``order`` (parameter names, e.g. ``model.named_parameters()``); names it lacks, or all of
    them without one, come in reverse arrival order: gradients arrive from the output backwards.
    """
    hists: Dict[str, Dict[str, HostHistogram]] = {}
    zeros: Dict[str, Dict[str, float]] = {}
    for r in records:
        if isinstance(r, HostHistogram):
            found = _split_prefix(r.tag, tags.GRAD)
            if found and not found[1].endswith("bias"):
                hists.setdefault(found[0], {})[found[1]] = r
        elif isinstance(r, HostScalar):
            found = _split_prefix(r.tag, tags.GRAD_ZERO_FRACTION)
            if found:
                zeros.setdefault(found[0], {})[found[1]] = r.value
    rank = {name: i for i, name in enumerate(order)}
    out = {}
    for prefix, by_name in hists.items():
        arrival = list(by_name)
        names = sorted(arrival, key=lambda n: (rank.get(n, len(rank)), -arrival.index(n)))
        layers = []
        for name in names:
            h = by_name[name]
            rms = math.sqrt(h.sum_squares / h.num) if h.num > 0 else 0.0
            layers.append(LayerFlow(name, rms, max(abs(h.min), abs(h.max)),
                                    zeros.get(prefix, {}).get(name, float("nan"))))
        out[prefix] = (next(iter(by_name.values())).step, layers)
    return out


def layer_histogram(tag: str, step: int, values: Sequence[float]) -> HostHistogram:
    """``values`` (one per layer) as a histogram whose bucket i spans [i, i+1) with height values[i]
    once TensorBoard has re-binned it into :data:`TB_BINS` buckets (see the module docstring).

    Each layer spans k = 30 // L of TensorBoard's buckets and its count is value * k, so every
    re-binned bucket of the layer reads exactly its value; an empty bucket pads the range to 30/k.
    Non-finite values count 0 (the sentinel reports them)."""
    n = len(values)
    k = max(TB_BINS // n, 1)
    top = TB_BINS / k if n <= TB_BINS else float(n)
    counts = [v * k if math.isfinite(v) else 0.0 for v in values]
    limits = [float(i + 1) for i in range(n)]
    if top > n:
        limits.append(top)
        counts.append(0.0)
    centres = [i + 0.5 for i in range(n)]
    # num: the layers, not the counts' sum, so that an all-zero profile (no zero gradient anywhere)
    # is still written (TensorBoardSink skips histograms of num 0)
    return HostHistogram(tag, step, 0.0, top, float(n), sum(c * x for c, x in zip(counts, centres)),
                         sum(c * x * x for c, x in zip(counts, centres)), limits, counts)


def short_name(name: str) -> str:
    return name[:-len(".weight")] if name.endswith(".weight") else name


class FlowPicture:
    """Draws the picture into one reused matplotlib figure (Agg): a logging step then costs the
    drawing and the PNG encoding, not a new figure (see bench figures in the module's tests)."""

    def __init__(self, size: Tuple[float, float] = (10, 6), dpi: int = 100) -> None:
        from .plots import _pyplot, readable

        plt = _pyplot()
        with readable():
            self.fig, (self.top, self.bottom) = plt.subplots(2, 1, figsize=size, sharex=True,
                                                            gridspec_kw={"height_ratios": [3, 2]})
        self.dpi = dpi

    def draw(self, layers: Sequence[LayerFlow], step: int, label: str = "") -> bytes:
        import io

        from matplotlib.ticker import NullLocator

        from .plots import readable

        with readable():
            top, bottom = self.top, self.bottom
            top.cla()
            bottom.cla()
            x = list(range(len(layers)))
            positive = [v for layer in layers for v in (layer.rms, layer.max_abs) if v > 0 and math.isfinite(v)]
            floor = min(positive) / 10 if positive else 1e-12
            top.bar(x, [layer.max_abs for layer in layers], width=0.8, color="tab:cyan", alpha=0.45,
                    label="max |gradient|")
            top.bar(x, [layer.rms for layer in layers], width=0.5, color="tab:blue", label="RMS gradient")
            for i, layer in enumerate(layers):
                if not layer.rms > 0:
                    top.annotate("0" if layer.rms == 0 else "NaN", (i, floor), ha="center", va="bottom",
                                 color="tab:red", fontweight="bold")
            with warnings.catch_warnings():  # all zero: nothing positive to scale, said by the "0" marks
                warnings.simplefilter("ignore")
                top.set_yscale("log")
            top.set_ylim(floor, (max(positive) if positive else 1.0) * 30)  # room for the legend
            top.yaxis.set_minor_locator(NullLocator())  # minor ticks of a log axis: most of the drawing time
            top.set_ylabel("gradient (log)")
            top.legend(loc="upper left", ncol=2, fontsize="small")
            top.grid(axis="y", alpha=0.3)
            fractions = [layer.zero_fraction for layer in layers]
            bottom.bar(x, [f if math.isfinite(f) else 0 for f in fractions], width=0.5, color="tab:red",
                       label="exactly zero")
            for i, f in enumerate(fractions if len(layers) <= 16 else ()):  # more: the numbers would overlap
                if math.isfinite(f):
                    bottom.annotate(f"{f:.0%}", (i, min(f, 1.0)), ha="center", va="bottom", fontsize="small")
            bottom.set_ylim(0, 1.15)
            bottom.set_ylabel("zero fraction")
            every = max(1, math.ceil(len(x) / 16))  # at most 16 names on the axis
            bottom.set_xticks(x[::every])
            bottom.set_xticklabels([short_name(layer.name) for layer in layers][::every],
                                   rotation=30 if len(x) > 6 else 0, ha="right" if len(x) > 6 else "center",
                                   fontsize="small" if len(x) > 6 else None)
            bottom.set_xlabel("layer weight, input  \u2192  output")
            self.fig.suptitle(f"{label}gradient flow at step {step}, input \u2192 output\na layer far below the "
                              f"others learns that much slower; red: weights whose gradient is exactly 0",
                              fontsize="medium")
            # fixed margins, not tight_layout: that re-measures every label and doubled the cost
            self.fig.subplots_adjust(left=0.1, right=0.98, top=0.86, bottom=0.2, hspace=0.12)
            buffer = io.BytesIO()
            # zlib level 1: a fifth of the default's encoding time (~40 ms), the file ~1.5x larger
            self.fig.savefig(buffer, format="png", dpi=self.dpi, pil_kwargs={"compress_level": 1})
        return buffer.getvalue()

    def close(self) -> None:
        from .plots import _pyplot

        _pyplot().close(self.fig)


class GradientFlowSink:
    """A :class:`probes.Sink` that passes everything on and adds the gradient-flow picture and
    profiles of every logging step that carries gradient histograms.

    ``order``: the model's parameter names, input first (train.py sets it from the model once the
    runs exist); ``path``: where the last picture is written on :meth:`flush` (None: nowhere).
    Drawing happens on the training thread, once per logging step (~0.1 s; measured in the report
    of issue 15), never on other steps.
    """

    def __init__(self, sink: Sink, order: Iterable[str] = (), path: Optional[Path] = None) -> None:
        self.sink, self.order, self.path = sink, list(order), path
        self._picture: Optional[FlowPicture] = None
        self._last: Dict[str, bytes] = {}  # prefix -> its latest picture

    def write(self, records: Sequence[HostRecord]) -> None:
        self.sink.write(records)
        flows = layer_flows(records, self.order)
        for prefix, (step, layers) in flows.items():
            if not layers:
                continue
            self.sink.write([layer_histogram(f"{prefix}{FLOW}/{stat}", step, [getattr(layer, stat) for layer in layers])
                             for stat in STATISTICS])
            if self._picture is None:
                self._picture = FlowPicture()
            png = self._picture.draw(layers, step, prefix.replace("/", ": ") if prefix else "")
            self.sink.image(f"{prefix}{FLOW}", png, step)
            self._last[prefix] = png

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self.sink.text(tag, text, step)

    def pin(self, *categories: object) -> None:
        """Pass a study's pinned charts on (:func:`probes.sinks.pin`) when the wrapped sink draws a dashboard."""
        method = getattr(self.sink, "pin", None)
        if method is not None:
            method(*categories)

    def image(self, tag: str, png: bytes, step: int = 0) -> None:
        self.sink.image(tag, png, step)

    def flush(self) -> None:
        if self.path is not None:
            for prefix, png in self._last.items():  # variant1/ -> variant1_gradient_flow.png
                path = self.path.with_name(prefix.replace("/", "_") + self.path.name)
                path.write_bytes(png)
        self.sink.flush()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            if self._picture is not None:
                self._picture.close()
                self._picture = None
            self.sink.close()
