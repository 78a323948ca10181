"""deep-sigmoid / deep-relu: how much each layer's weights move per step, first vs last layer."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

from probes import Probe, WeightChange
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


class VanishingStudy(Study):
    """Attach :class:`probes.WeightChange`; report mean |dW| per layer and first/last ratio, plot it."""

    figure = "weight_change.png"

    def probes(self) -> List[Probe]:
        return [WeightChange()]

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
