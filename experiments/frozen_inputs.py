"""dense-mlp: the first-layer rows that never changed, against the input pixels that were always 0.

A pixel that is 0 in every training image contributes ``x_i * dL/dy_j = 0`` to the gradient
of every weight in its row of the first kernel (Keras' (in, out) kernel; column ``i`` of
torch's (out, in) weight), and RMSprop's update ``lr * g / (sqrt(a) + eps)`` is then exactly
0, so that row keeps its initial values bit for bit.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

from probes import DeadInputs, FrozenWeights, Probe
from probes.layout import Category, chart
from probes.records import HostScalar
from probes.sinks import Sink

from .plots import frozen_inputs_figure
from .run import Run
from .study import Study


def relation(frozen: set, zero: set) -> str:
    """How the frozen rows relate to the always-zero inputs: equal, subset (frozen is a proper
    subset of zero), superset, or other."""
    if frozen == zero:
        return "equal"
    if frozen < zero:
        return "subset"
    if frozen > zero:
        return "superset"
    return "other"


FROZEN_ROWS = "frozen_inputs/frozen_rows"
ALWAYS_ZERO_PIXELS = "frozen_inputs/always_zero_pixels"
BOTH = "frozen_inputs/frozen_and_always_zero"


class FrozenInputsStudy(Study):
    """Attach :class:`probes.FrozenWeights` and :class:`probes.DeadInputs`; compare their sets."""

    figure = "frozen_inputs.png"

    def probes(self) -> List[Probe]:
        return [FrozenWeights(), DeadInputs()]

    def dashboard(self, runs: List[Run]) -> List[Category]:
        return [Category("dense-mlp: first-layer rows that never changed, against pixels 0 in every image", (
            chart("first-layer rows (one per input pixel) never changed so far, pixels 0 in every training image "
                  "so far, and both: three lines on one when the frozen rows are exactly the always-zero pixels",
                  (FROZEN_ROWS, ALWAYS_ZERO_PIXELS, BOTH)),
        ))]

    def after_log(self, runs: List[Run], step: int, sink: Sink) -> None:
        """The two sets' sizes so far, at each logging step (several processes: rank 0's examples)."""
        monitor = runs[0].monitor
        frozen, zero = monitor["frozen"].frozen_input_features(), monitor["dead_inputs"].always_zero()
        if frozen is None or zero is None:
            return
        frozen_set, zero_set = set(frozen.tolist()), set(zero.tolist())
        sink.write([HostScalar(FROZEN_ROWS, step, len(frozen_set)),
                    HostScalar(ALWAYS_ZERO_PIXELS, step, len(zero_set)),
                    HostScalar(BOTH, step, len(frozen_set & zero_set))])

    def finish(self, runs: List[Run], run_dir: Path, sink: Sink) -> Tuple[Dict[str, Any], str]:
        run = runs[0]
        frozen_probe, dead = run.monitor["frozen"].summary(), run.monitor["dead_inputs"].summary()
        inputs = frozen_probe["first_layer_inputs"]
        frozen, zero = frozen_probe["frozen_first_layer_inputs"], dead["always_zero"]
        how = relation(set(frozen), set(zero))
        weight = frozen_probe["parameters"][frozen_probe["first_layer"]]
        facts = {"frozen_inputs": {
            "always_zero_inputs": len(zero), "frozen_first_layer_rows": len(frozen), "relation": how,
            "inputs": inputs, "examples_seen": dead["examples"], "first_layer": frozen_probe["first_layer"],
            "first_layer_elements_changed": weight["changed"], "first_layer_elements": weight["elements"],
            "always_zero_pixels": zero, "frozen_rows": frozen,
        }}
        steps = run.monitor.global_step
        zero_set, frozen_set = set(zero), set(frozen)
        png = frozen_inputs_figure([i in frozen_set for i in range(inputs)], [i in zero_set for i in range(inputs)])
        (run_dir / self.figure).write_bytes(png)
        sink.image("frozen_inputs", png, steps)
        n = dead["examples"]
        if how == "equal":
            sentence = (f"{len(zero)} of {inputs} input pixels were 0 in every one of the {n} training images seen; "
                        f"exactly those {len(frozen)} rows of layer 1 never changed, bit for bit (zero input -> "
                        f"zero gradient -> zero {self.args.optimizer} update), and every other row changed "
                        f"(relation: equal)")
        else:
            overlap = "a " + how + " of" if how in ("subset", "superset") else "only partly the same as"
            sentence = (f"{len(zero)} of {inputs} input pixels were 0 in all {n} training images seen and "
                        f"{len(frozen)} rows of layer 1 never changed: the frozen rows are {overlap} the always-zero "
                        f"pixels ({len(frozen_set - zero_set)} frozen rows whose pixel was nonzero somewhere, "
                        f"{len(zero_set - frozen_set)} always-zero pixels whose row changed; relation: {how})")
        return facts, sentence
