"""The dashboard a run opens on: which scalar charts come first, and in what order.

TensorBoard's default Time Series tab sorts tags alphabetically, so a run opens on whatever
statistic sorts first (``activation_zero_fraction/bn1``), one chart per tag. The
custom-scalars tab shows a *layout* instead: categories of charts, each chart several tags.
A :class:`Dashboard` builds one from the tags a sink sees:

1. the charts a caller pins (a study's question: the answer first);
2. gradient flow: one chart per gradient statistic, every layer on it, input to output;
3. loss and accuracy, which the loss findings read;
4. what the updates do to the weights (update ratio, mean |dW|);
5. the rest, collapsed.

It is plain Python (no TensorBoard here): :class:`probes.sinks.TensorBoardSink` turns
:meth:`Dashboard.categories` into TensorBoard's ``Layout`` proto. Records reach a sink in
probe order and, within a probe, in the order its hooks fired: forward order for
activations and weight updates, *backward* order (output first) for gradients. The model's
order is therefore the reversed gradient order (every layer a gradient reaches), with the
layers only a forward statistic names slotted in after their forward predecessor.

The layout changes only when a tag is new; the sink writes it again then, a handful of times
a run, and TensorBoard's plugin shows the last one written (it reads one layout per run,
the latest).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from . import tags

#: gradient statistics whose records arrive in backward order (output layer first)
BACKWARD_KINDS = frozenset({tags.GRAD_NORM, tags.GRAD_ZERO_FRACTION, tags.OUTPUT_GRAD_NORM,
                            tags.OUTPUT_GRAD_ZERO_FRACTION})
#: the gradient-flow charts, in this order; any other ``grad*`` / ``output_grad*`` scalar follows them
GRADIENT_FLOW = (tags.GRAD_NORM, tags.OUTPUT_GRAD_NORM, tags.GRAD_ZERO_FRACTION, tags.OUTPUT_GRAD_ZERO_FRACTION)
UPDATES = (tags.UPDATE_RATIO, tags.WEIGHT_CHANGE, tags.UPDATE_NORM, tags.UPDATE_GRAD_NORM)
#: statistics whose records arrive in forward order (input layer first)
FORWARD_KINDS = frozenset({tags.ACTIVATION_ZERO_FRACTION, tags.ACTIVATION_SATURATED_FRACTION}) | frozenset(UPDATES)
#: statistics of a parameter (``fc1.weight``), not of a layer's output (``fc1``)
PARAM_KINDS = frozenset({tags.GRAD_NORM, tags.GRAD_ZERO_FRACTION}) | frozenset(UPDATES)
#: statistics a tag's kind is recognised by, also behind a prefix such as ``variant2/``
KNOWN_KINDS = frozenset(GRADIENT_FLOW) | frozenset(UPDATES) | {
    tags.ACTIVATION_ZERO_FRACTION, tags.ACTIVATION_SATURATED_FRACTION, "train", "epoch"}

#: what each statistic's chart shows, after its name
DESCRIPTIONS = {
    tags.GRAD_NORM: "L2 norm of each parameter's gradient",
    tags.OUTPUT_GRAD_NORM: "L2 norm of the gradient arriving at each layer's output",
    tags.GRAD_ZERO_FRACTION: "share of each parameter's gradient entries exactly zero",
    tags.OUTPUT_GRAD_ZERO_FRACTION: "share of the gradient at each layer's output exactly zero",
    tags.UPDATE_RATIO: "||update|| / ||weight|| of each weight matrix per step",
    tags.WEIGHT_CHANGE: "mean |W_t - W_t-1| of each weight matrix per step",
    tags.UPDATE_NORM: "||update|| of each weight matrix",
    tags.UPDATE_GRAD_NORM: "||gradient|| the optimizer applied to each weight matrix",
    tags.ACTIVATION_ZERO_FRACTION: "share of each layer's outputs exactly zero",
    tags.ACTIVATION_SATURATED_FRACTION: "share of each sigmoid/tanh output within 1e-3 of its bounds",
    "train": "loss of every step",
    "epoch": "per epoch",
}

GRADIENT_FLOW_TITLE = "gradient flow (every layer, input to output)"
LOSS_TITLE = "loss and accuracy"
UPDATES_TITLE = "weight updates (every layer, input to output)"
REST_TITLE = "everything else"


@dataclass(frozen=True)
class Chart:
    """One line chart: every tag on it is one series (TensorBoard matches each as an exact tag)."""

    title: str
    tags: Tuple[str, ...]


@dataclass(frozen=True)
class Category:
    """A titled group of charts; ``closed`` ones start collapsed."""

    title: str
    charts: Tuple[Chart, ...]
    closed: bool = False


def chart(title: str, tags_: Iterable[str]) -> Chart:
    return Chart(title, tuple(tags_))


def _module(name: str, kind: str) -> str:
    """The module a statistic's name belongs to: ``fc1.weight`` -> ``fc1``, ``relu#1`` -> ``relu``."""
    if kind in PARAM_KINDS or (kind.startswith("grad") and "." in name):
        return name.rsplit(".", 1)[0] if "." in name else ""
    return tags.module_name(name)


def parse(tag: str) -> Tuple[str, str, str]:
    """(prefix, kind, name) of a tag: ``variant2/update_ratio/conv1.weight`` ->
    ``("variant2/", "update_ratio", "conv1.weight")``; a tag of unknown kind has no prefix."""
    parts = tag.split("/")
    for i, part in enumerate(parts[:-1]):
        if part in KNOWN_KINDS or part.startswith(("grad", "output_grad")):
            return "/".join(parts[:i]) + ("/" if i else ""), part, "/".join(parts[i + 1:])
    kind, name = tags.split(tag)
    return "", kind, name


def _split_epoch(c: Chart) -> List[Chart]:
    """An ``epoch/*`` chart as one chart of losses and one of accuracies (scales apart), others kept."""
    if not c.title.split(":", 1)[0].endswith("epoch"):
        return [c]
    groups: Dict[str, List[str]] = {}
    for t in c.tags:
        name = t.rsplit("/", 1)[-1]
        groups.setdefault("loss" if "loss" in name else "accuracy" if "accuracy" in name else "", []).append(t)
    head = c.title.split(":", 1)[0]
    return [chart(f"{head}: {what or 'other'} per epoch", ts) for what, ts in groups.items()]


class Dashboard:
    """The layout of one run, grown from the scalar tags it is shown (:meth:`observe`)."""

    def __init__(self) -> None:
        self.pinned: List[Category] = []
        self._tags: Dict[str, None] = {}  # scalar tags in arrival order
        self._forward: Dict[str, int] = {}  # module -> position, from forward-ordered statistics
        self._backward: List[str] = []  # modules in gradient arrival order (output first)
        self._order: Optional[Dict[str, int]] = None  # cached :meth:`_model_order`

    def pin(self, *categories: Category) -> None:
        """Put ``categories`` first, before everything :meth:`observe` finds (a question's charts)."""
        self.pinned.extend(categories)

    def observe(self, scalar_tags: Iterable[str]) -> bool:
        """Take the tags of one batch of scalar records; True when a tag was new (the layout changed)."""
        new = False
        for t in scalar_tags:
            if t in self._tags:
                continue
            self._tags[t] = None
            new = True
            _, kind, name = parse(t)
            if kind in BACKWARD_KINDS:
                module = _module(name, kind)
                if module not in self._backward:
                    self._backward.append(module)
            elif kind in FORWARD_KINDS:
                self._forward.setdefault(_module(name, kind), len(self._forward))
        if new:
            self._order = None
        return new

    def _model_order(self) -> Dict[str, int]:
        """Position of each module, input first: the reversed gradient order (every layer a gradient
        reaches, in the order the backward pass met them), with layers only forward statistics name
        put after the one they follow in the forward pass."""
        if self._order is None:
            order = list(reversed(self._backward))
            forward = sorted(self._forward, key=self._forward.get)
            for i, module in enumerate(forward):
                if module in order:
                    continue
                before = next((m for m in reversed(forward[:i]) if m in order), None)
                order.insert(order.index(before) + 1 if before is not None else 0, module)
            self._order = {m: i for i, m in enumerate(order)}
        return self._order

    def _position(self, name: str, kind: str) -> Tuple[int, int, bool, str]:
        """Sort key of a layer or parameter name: input to output, calls in order, weight before bias."""
        order = self._model_order()
        module = _module(name, kind)
        call = name.split("#", 1)[1] if "#" in name and kind not in PARAM_KINDS else "0"
        leaf = name.rsplit(".", 1)[-1] if kind in PARAM_KINDS else ""
        return order.get(module, len(order)), int(call) if call.isdigit() else 0, leaf != "weight", name

    def _by_kind(self, kinds: Optional[Sequence[str]], exclude: Iterable[str] = ()) -> Dict[Tuple[str, str], List[str]]:
        """``{(kind, prefix): [tag, ...]}`` of the tags of ``kinds`` (None: any), each list in model order."""
        skip = set(exclude)
        groups: Dict[Tuple[str, str], List[Tuple[tuple, str]]] = {}
        for t in self._tags:
            prefix, kind, name = parse(t)
            if t in skip or (kinds is not None and kind not in kinds):
                continue
            key = self._position(name, kind) if kind not in ("train", "epoch") else (0, 0, False, "")
            groups.setdefault((kind, prefix), []).append((key, t))
        return {k: [t for _, t in sorted(v, key=lambda item: item[0])] if k[0] not in ("train", "epoch")
                else [t for _, t in v] for k, v in groups.items()}

    def _charts(self, kinds: Sequence[str], groups: Dict[Tuple[str, str], List[str]]) -> List[Chart]:
        order = {k: i for i, k in enumerate(kinds)}
        keys = sorted(groups, key=lambda kp: (order.get(kp[0], len(order)), kp[0], kp[1]))
        charts = []
        for kind, prefix in keys:
            description = DESCRIPTIONS.get(kind)
            charts.append(chart(f"{prefix}{kind}: {description}" if description else f"{prefix}{kind}",
                                groups[(kind, prefix)]))
        return charts

    def categories(self) -> List[Category]:
        """The whole layout: the pinned categories, then gradient flow, loss, updates, the rest."""
        flow_kinds = [k for k in {parse(t)[1]: None for t in self._tags}
                      if k.startswith(("grad", "output_grad"))]
        flow_kinds = list(GRADIENT_FLOW) + sorted(k for k in flow_kinds if k not in GRADIENT_FLOW)
        flow = self._charts(flow_kinds, self._by_kind(flow_kinds))
        loss = [split_part for c in self._charts(["train", "epoch"], self._by_kind(["train", "epoch"]))
                for split_part in _split_epoch(c)]
        updates = self._charts(UPDATES, self._by_kind(UPDATES))
        shown = {t for c in flow + loss + updates for t in c.tags}
        shown.update(t for category in self.pinned for c in category.charts for t in c.tags)
        rest = self._charts([], self._by_kind(None, exclude=shown))
        out = list(self.pinned)
        for title, charts, closed in ((GRADIENT_FLOW_TITLE, flow, False), (LOSS_TITLE, loss, False),
                                      (UPDATES_TITLE, updates, False), (REST_TITLE, rest, True)):
            if charts:
                out.append(Category(title, tuple(charts), closed))
        return out
