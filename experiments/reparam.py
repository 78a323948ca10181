"""scaled-conv: three parameterisations of one function, trained from the same start.

Variants 2 and 3 hold variant 1's weights x3 (conv1) and x200 (conv2) and divide by 3 and
200 again, so at step 0 all three compute the same function. They train at different
speeds because Adam's step is about ``lr`` per weight whatever the gradient's scale:
relative to weights 3x and 200x larger, the same step is a 3x and 200x smaller change.
:class:`probes.UpdateRatio` shows it as ||update|| / ||weight|| per layer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

import torch

from models.scaled_conv import ScaledConvNet
from probes import UpdateRatio, suspended
from probes.base import weight_matrices
from probes.layout import Category, chart
from probes.sinks import Sink

from .plots import compare_figure
from .run import Run, make_run
from .study import Study
from .tasks import TASKS

INIT_CHECK_IMAGES = 256  # training images on which the variants' outputs at step 0 are compared
LAST_STEPS = 50  # final_train_loss: mean training loss of the last steps


class ReparamStudy(Study):
    """``--variant N`` trains one variant; ``--compare`` trains 1, 2, 3 on the same batches."""

    figure = "loss_by_variant.png"  # with --compare
    max_abs_output_diff_at_init = float("nan")

    def make_runs(self, sink: Sink) -> List[Run]:
        base = ScaledConvNet(variant=1)  # the one random init all variants share
        variants = (1, 2, 3) if self.args.compare else (self.args.variant,)
        runs = []
        for v in variants:
            model = ScaledConvNet(variant=v).load_variant1_weights(base).to(self.device)
            runs.append(make_run(str(v) if self.args.compare else "", model, self.args, sink, [UpdateRatio(every_step=True)]))
        if self.args.compare:
            self.max_abs_output_diff_at_init = self.output_difference([r.model for r in runs])
        return runs

    def dashboard(self, runs: List[Run]) -> List[Category]:
        layers = [n for n, _ in weight_matrices(runs[0].model)]
        prefixes = [f"variant{r.label}/" for r in runs] if self.args.compare else [""]
        which = "variants 1, 2, 3" if self.args.compare else f"variant {self.args.variant}"
        return [Category(f"scaled-conv: ||update|| / ||weight|| of {which}", (
            chart(f"||update|| / ||weight|| per step, {which}, each layer ({', '.join(layers)}): the same Adam step "
                  f"is a 3x and 200x smaller change of weights 3x and 200x larger",
                  [f"{p}update_ratio/{layer}" for p in prefixes for layer in layers]),
            chart(f"training loss of every step, {which}", [f"{p}train/loss" for p in prefixes]),
        ))]

    @torch.no_grad()
    def output_difference(self, nets: List[torch.nn.Module]) -> float:
        """Largest |sigmoid output of variant v - that of variant 1| over the first training images."""
        n = min(INIT_CHECK_IMAGES, len(self.train))
        x, _ = TASKS["shifted-pixels"].batch(self.train.images[:n], self.train.labels[:n], self.device)
        with suspended():
            outputs = [torch.sigmoid(net(x)) for net in nets]
        return max(float((out - outputs[0]).abs().max()) for out in outputs)

    def finish(self, runs: List[Run], run_dir: Path, sink: Sink) -> Tuple[Dict[str, Any], str]:
        steps = runs[0].monitor.global_step
        variants = {}
        for r in runs:
            losses = [v for _, v in r.memory.scalars["train/loss"]]
            ratio = r.monitor["update_ratio"].summary()
            variants[r.label or str(self.args.variant)] = {
                "final_loss": r.history[-1]["test_loss"],
                "final_train_loss": sum(losses[-LAST_STEPS:]) / len(losses[-LAST_STEPS:]),
                "test_pixel_accuracy": r.history[-1]["test_accuracy"],
                "update_ratio": ratio,
            }
        if not self.args.compare:
            (label, facts), = variants.items()
            ratio = facts["update_ratio"]
            ratios = ", ".join(f"{n} {v:.2g}" for n, v in zip(ratio["layers"], ratio["mean_update_ratio"]))
            return {"variant": facts}, (
                f"variant {label} after {steps} steps: test loss {facts['final_loss']:.4f}, pixel accuracy "
                f"{facts['test_pixel_accuracy']:.4f}; mean ||update||/||weight|| per step: {ratios} "
                f"(--compare trains all three side by side)")
        png = compare_figure({f"variant {label}": r.memory.scalars["train/loss"] for label, r in zip(variants, runs)},
                             "scaled-conv: the same function at step 0, three parameterisations")
        (run_dir / self.figure).write_bytes(png)
        sink.image("loss_by_variant", png, steps)
        facts = {"variants": variants, "max_abs_output_diff_at_init": self.max_abs_output_diff_at_init}
        return facts, self.describe(variants, steps)

    def describe(self, variants: Dict[str, Dict[str, Any]], steps: int) -> str:
        loss = {v: f["final_loss"] for v, f in variants.items()}
        best = min(loss, key=loss.get)
        last = variants["1"]["update_ratio"]["layers"][-1]

        def per_variant(key: str) -> str:
            return ", ".join(f"{f['update_ratio'][key][-1]:.2g}" for f in variants.values())

        adaptive = self.args.optimizer in ("adam", "rmsprop", "adadelta")
        why = (f"With {self.args.optimizer} each step is about lr per weight whatever the gradient's scale"
               if adaptive else f"With {self.args.optimizer} each step is proportional to the gradient")
        verdict = ("so variants 2 and 3 learn slower per step" if best == "1" else
                   f"yet variant {best} ended lowest in this run")
        return (f"from the same function at step 0 (outputs differ by at most "
                f"{self.max_abs_output_diff_at_init:.1g}), after {steps} steps on the same batches the test loss "
                f"is {loss['1']:.4f} (variant 1), {loss['2']:.4f} (2), {loss['3']:.4f} (3): lowest for variant "
                f"{best}. {why}: mean ||grad|| of {last} is {per_variant('mean_grad_norm')} (variants 1, 2, 3), "
                f"its ||update|| {per_variant('mean_update_norm')} and ||update||/||weight|| "
                f"{per_variant('mean_update_ratio')}: relative to weights 3x and 200x larger the steps are that much "
                f"smaller, {verdict}. " + self.same_function_note(loss))

    @staticmethod
    def same_function_note(loss: Dict[str, float]) -> str:
        """Variants 2 and 3 are one function of their weights: conv(W, x) / c == conv(W, x / c)."""
        gap = abs(loss["2"] - loss["3"])
        return (f"The test losses of variants 2 and 3 differ by {gap:.2g}: without biases, dividing a conv's output "
                f"or its input by the same number is the same function of the same weights, so they get the same "
                f"gradients and train alike up to rounding")
