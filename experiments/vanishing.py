"""deep-sigmoid / deep-relu: how much each layer's weights move per step, first vs last layer."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

from probes import Probe, WeightChange
from probes.base import weight_matrices
from probes.layout import Category, chart
from probes.records import HostScalar
from probes.sinks import Sink

from .plots import weight_change_figure
from .run import Run
from .study import Study

WHY = {
    "deep-sigmoid": "each sigmoid multiplies the gradient on its way back by its derivative, at most 0.25, "
                    "so it shrinks layer by layer and the first layer barely learns",
    "deep-relu": "ReLU passes the gradient through unchanged wherever it is active, so far more of it "
                 "reaches the first layer than through sigmoids",
}


FIRST_TO_LAST = "weight_change_ratio/first_to_last"


def window_mean(series: List[Tuple[int, float]], first: int, last: int) -> float:
    """Mean of the values of ``series`` (``[(step, value), ...]``, steps increasing) at steps
    ``first..last``, read from the end: a logging step costs its window, not the whole run."""
    values = []
    for step, value in reversed(series):
        if step < first:
            break
        if step <= last:
            values.append(value)
    return sum(values) / len(values) if values else float("nan")


class VanishingStudy(Study):
    """Attach :class:`probes.WeightChange`; report mean |dW| per layer and first/last ratio, plot it."""

    figure = "weight_change.png"

    def probes(self) -> List[Probe]:
        return [WeightChange(every_step=True)]  # the question plots every batch

    def dashboard(self, runs: List[Run]) -> List[Category]:
        names = [n for n, _ in weight_matrices(runs[0].model)]
        order = f"{names[0]} (input) to {names[-1]} (output)" if names else ""
        return [Category(f"{self.args.model}: how far each layer's weights move, input to output", (
            chart(f"mean |W_t - W_t-1| per step of each weight matrix, {order}: the first far below the last is "
                  f"a vanishing gradient", [f"weight_change/{n}" for n in names]),
            chart("the first weight matrix's mean |dW| over the last's, over the steps since the previous log: "
                  "far below 1 is a vanishing gradient", [FIRST_TO_LAST]),
            chart(f"||gradient|| of each weight matrix, {order}", [f"grad_norm/{n}" for n in names]),
        ))]

    def after_log(self, runs: List[Run], step: int, sink: Sink) -> None:
        """First-to-last ratio of mean |dW| over the logging interval ending at ``step`` (the same
        window whether or not the run was resumed in between)."""
        run = runs[0]
        layers = run.monitor["weight_change"].layers
        if len(layers) < 2:
            return
        first, last = (window_mean(run.memory.scalars[f"weight_change/{name}"], step - self.args.log_every + 1, step)
                       for name in (layers[0], layers[-1]))
        if last > 0:
            sink.write([HostScalar(FIRST_TO_LAST, step, first / last)])

    def finish(self, runs: List[Run], run_dir: Path, sink: Sink) -> Tuple[Dict[str, Any], str]:
        run = runs[0]
        change = run.monitor["weight_change"].summary()
        layers, moved = change["layers"], change["mean_abs_dw"]
        ratio = moved[0] / moved[-1] if moved[-1] else float("nan")
        facts = {"weight_change": {"layers": layers, "mean_abs_dw": moved, "first_to_last_ratio": ratio}}
        steps = run.monitor.global_step
        png = weight_change_figure({name: run.memory.scalars[f"weight_change/{name}"] for name in layers},
                                   run.memory.scalars["train/loss"],
                                   f"{self.args.model}: mean |dW| per step of each weight matrix")
        (run_dir / self.figure).write_bytes(png)
        sink.image("weight_change", png, steps)
        per_layer = ", ".join(f"{name} {value:.2g}" for name, value in zip(layers, moved))
        sentence = (f"over {steps} steps the weights moved on average per step (mean |W_t - W_t-1|): {per_layer}; "
                    f"the first layer moved {ratio:.3g}x as much as the last: {WHY[self.args.model]}")
        return facts, sentence
