"""The diagnosis rules on synthetic statistics: each fires on its case, with the numbers, and
stays silent on the healthy contrast. Fast: no training."""
import math

import pytest
from torch import nn

from probes import Finding, compare_update_ratios, diagnose
from probes.diagnosis import at_least, report

ORDER = ["l0.weight", "l1.weight", "l2.weight"]


def grads(*per_layer, steps=(0, 5, 10)):
    """grad_norm scalars with the given value per layer at every logged step."""
    return {f"grad_norm/{name}": [(s, v) for s in steps] for name, v in zip(ORDER, per_layer)}


def ids(findings):
    return [f.id for f in findings]


def test_vanishing_fires_with_per_layer_numbers_and_not_on_a_flat_profile():
    model = nn.Sequential(nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 2))
    order = {f"grad_norm/{i}.weight": v for i, v in zip((0, 2, 4), (0.02, 0.2, 2.0))}
    scalars = {tag: [(0, v), (5, v)] for tag, v in order.items()}
    (f,) = diagnose(scalars=scalars, model=model)
    assert (f.id, f.severity) == ("vanishing-gradient", "warning")
    assert f.evidence["layers"] == ["0.weight", "2.weight", "4.weight"]  # the model's order, input first
    assert f.evidence["median_grad_norm"] == [0.02, 0.2, 2.0]
    assert f.evidence["first_to_last_grad_norm_ratio"] == pytest.approx(0.01)
    assert f.evidence["falls_towards_input"] and f.evidence["logged_steps"] == [0, 5, 2]
    assert "0.weight 0.02" in f.message and "2.0 orders of magnitude" in f.message
    assert diagnose(scalars={tag: [(0, 1.0)] for tag in order}, model=model) == []


def test_vanishing_at_autotrainer_thresholds_is_an_error():
    summary = {"weight_change": {"layers": ORDER, "mean_abs_dw": [1e-8, 1e-6, 1e-4], "steps": 7}}
    (f,) = diagnose(summary, scalars=grads(5e-5, 1e-3, 0.1))
    assert f.severity == "error" and set(f.evidence["rules"]) == {"autotrainer", "grad_norm_ratio", "dw_ratio"}
    assert f.evidence["mean_abs_dw"] == [1e-8, 1e-6, 1e-4]
    assert f.evidence["first_to_last_dw_ratio"] == pytest.approx(1e-4)


def test_weight_change_alone_can_show_vanishing():
    summary = {"weight_change": {"layers": ORDER, "mean_abs_dw": [1e-6, 1e-5, 1e-3], "steps": 20}}
    assert ids(diagnose(summary)) == ["vanishing-gradient"]
    summary["weight_change"]["mean_abs_dw"] = [1e-4, 1e-4, 1e-3]  # 0.1: a relu-like profile
    assert diagnose(summary) == []


def scan(**extra):
    facts = {"pairs": 1000, "all_zero": 150, "all_zero_fraction": 0.15, "clipped": 150, "eps": 1e-7,
             "all_zero_iff_target_prob_clipped": True, "all_zero_but_not_clipped": 0, "min_target_prob": 1e-20}
    facts.update(extra)
    return facts


def test_zero_gradient_pairs_explained_by_the_clip_name_the_clip_and_the_fix():
    (f,) = diagnose(pair_scan=scan(step=896))
    assert (f.id, f.severity) == ("loss-clipping-zero-grad", "warning")
    assert "150 of 1000" in f.message and "1e-07" in f.message
    assert "clip" in f.cause and "--loss logits" in f.fix and "from_logits" in f.fix
    assert f.evidence["all_zero"] == 150 and f.evidence["step"] == 896 and f.evidence["eps"] == 1e-7
    assert diagnose(pair_scan=scan(all_zero=0, all_zero_fraction=0.0, clipped=0)) == []
    other = diagnose(pair_scan=scan(all_zero_iff_target_prob_clipped=False, all_zero_but_not_clipped=3))
    assert ids(other) == ["exact-zero-gradient"]


def frozen_summary(frozen, zero, dead_units=0):
    return {"frozen": {"first_layer": "fc1.weight", "first_layer_inputs": 784, "frozen_first_layer_inputs": frozen},
            "dead_inputs": {"layer": "fc1", "features": 784, "examples": 2000, "always_zero": zero},
            "dead_units": {"layers": {"relu1": {"units": 512, "dead": dead_units, "examples": 2000,
                                                "dead_units": list(range(dead_units))}}}}


def test_frozen_rows_from_always_zero_inputs_are_not_called_dead_relus():
    (f,) = diagnose(frozen_summary([0, 1, 2, 27], [0, 1, 2, 27]))
    assert f.id == "frozen-by-dead-input" and f.evidence["relation"] == "equal"
    assert f.evidence["frozen_and_always_zero"] == 4 and f.evidence["input_indices"] == [0, 1, 2, 27]
    assert f.evidence["dead_relu_units"] == {"relu1": 0} and "not dead ReLUs" in f.message
    partly = diagnose(frozen_summary([0, 1, 5], [0, 1, 2]))[0].evidence
    assert partly["relation"] == "other"
    assert (partly["frozen_not_explained"], partly["always_zero_but_changed"]) == ([5], [2])
    assert diagnose(frozen_summary([], [0, 1])) == []


def test_dead_relu_is_a_warning_from_ten_percent_of_a_layer():
    few = diagnose(frozen_summary([], [], dead_units=5))
    assert [(f.id, f.severity) for f in few] == [("dead-relu", "info")]
    (many,) = diagnose(frozen_summary([], [], dead_units=100))
    assert many.severity == "warning" and many.evidence["worst_layer"] == "relu1"
    assert many.evidence["worst_fraction"] == pytest.approx(100 / 512) and "100 of 512" in many.message


def test_saturation():
    scalars = {"activation_saturated_fraction/act1": [(0, 0.1), (5, 0.7), (10, 0.8)],
               "activation_saturated_fraction/act2": [(0, 0.0), (5, 0.0), (10, 0.1)]}
    (f,) = diagnose(scalars=scalars)
    assert f.id == "saturation" and f.evidence["median_saturated_fraction"] == {"act1": 0.7}
    assert f.evidence["logged_steps"] == {"act1": [0, 5, 10]}


def test_exploding_and_non_finite():
    scalars = grads(1.0, 1.0, 1.0, steps=(0,))
    for name in ORDER:
        scalars[f"grad_norm/{name}"] += [(10, 50.0), (20, 300.0 if name == "l1.weight" else 1.0)]
    (f,) = diagnose(scalars=scalars, model=None)
    assert f.id == "exploding-gradient" and f.evidence["peak_step"] == 20
    assert f.evidence["largest_parameter"] == "l1.weight" and f.evidence["growth"] > 100
    scalars["train/loss"] = [(0, 2.3), (30, math.nan)]
    assert "non-finite" in ids(diagnose(scalars=scalars))
    (nf,) = diagnose({"nonfinite": {"step": 7, "where": "gradient", "name": "l1.weight"}})
    assert (nf.id, nf.severity, nf.evidence["step"], nf.evidence["name"]) == ("non-finite", "error", 7, "l1.weight")


def ratios(r1, r2, steps=15):
    return {"update_ratio": {"layers": ["conv1.weight", "conv2.weight"], "steps": steps,
                             "mean_grad_norm": [0.1, 0.1], "mean_update_norm": [0.06, 0.035],
                             "mean_update_ratio": [r1, r2]}}


def test_update_ratio_imbalance_between_layers_and_between_variants():
    (f,) = diagnose(ratios(0.0091, 0.00012))
    assert f.id == "update-ratio-imbalance" and f.evidence["slowest"] == "conv2.weight"
    assert f.evidence["spread"] == pytest.approx(75.8, rel=1e-2)
    assert diagnose(ratios(0.024, 0.0238)) == []
    (c,) = compare_update_ratios({"variant 1": ratios(0.024, 0.0238), "variant 2": ratios(0.0091, 0.00012)})
    assert c.evidence["layer"] == "conv2.weight" and c.evidence["spread"] == pytest.approx(198, rel=1e-2)
    assert c.evidence["mean_update_ratio"] == {"variant 1": 0.0238, "variant 2": 0.00012}
    assert compare_update_ratios({"a": ratios(0.02, 0.02), "b": ratios(0.01, 0.01)}) == []


def test_findings_serialise_and_report_worst_first():
    findings = [Finding("a", "info", "m1"), Finding("b", "error", "m2", {"x": 1}, "c", "f")]
    assert findings[1].to_dict() == {"id": "b", "severity": "error", "message": "m2", "evidence": {"x": 1},
                                     "cause": "c", "fix": "f"}
    assert report(findings).splitlines()[1].startswith("[error] b: m2")
    assert at_least(findings, "warning") == [findings[1]]
    assert report([]) == "diagnosis: nothing abnormal found"
