"""Each diagnosis rule on its smallest faulty case, and silent on the healthy one next to it; how
findings are linked (cause first, consequences under it). Synthetic statistics: no training."""
import math

import pytest
from torch import nn

from probes import Finding, diagnose
from probes.activations import squash_bounds
from probes.findings import CAUSES, link, report
from probes.structure import below, describe
from probes.thresholds import ACTIVE_BEFORE


def ids(findings, severity="info"):
    rank = ("info", "warning", "error").index(severity)
    return [f.id for f in findings if ("info", "warning", "error").index(f.severity) >= rank]


def one(findings, fid):
    (f,) = [f for f in findings if f.id == fid]
    return f


def layout(sizes, layers=None):
    """A structure (probes.structure.describe) for weights of these sizes, input first."""
    return {"weights": list(sizes), "sizes": dict(sizes),
            "layers": layers or [[n.rsplit(".", 1)[0], "Linear", [n]] for n in sizes]}


def flat(value, steps=(0, 10, 20, 30)):
    return [(s, value) for s in steps]


# -- gradients --------------------------------------------------------------------------------
def test_vanishing_is_judged_per_element_not_by_whole_tensor_norms():
    """pytorch/examples' Net: conv1 (288 weights) has a whole-norm 0.09 of fc2's (1,280), which
    per element is 0.19: no vanishing. 100x smaller per element is one, with consistent evidence."""
    sizes = {"conv1.weight": 288, "fc2.weight": 1280}
    healthy = {"grad_norm/conv1.weight": flat(0.09), "grad_norm/fc2.weight": flat(1.0)}
    assert "vanishing-gradient" not in ids(diagnose(scalars=healthy, structure=layout(sizes)))
    faulty = {"grad_norm/conv1.weight": flat(0.09 / 1000), "grad_norm/fc2.weight": flat(1.0)}
    f = one(diagnose(scalars=faulty, structure=layout(sizes)), "vanishing-gradient")
    rms = f.evidence["median_rms_grad"]
    assert rms == pytest.approx([0.09e-3 / math.sqrt(288), 1 / math.sqrt(1280)])
    assert f.evidence["first_to_last_rms_grad_ratio"] == pytest.approx(rms[0] / rms[1])
    assert rms[0] / rms[1] < 0.01
    assert f.evidence["measure"] == "rms" and f.evidence["falls_towards_input"] and "RMS" in f.message


def test_exploding_gradient_relative_to_the_weights():
    table = {"layers": ["a.weight", "b.weight"], "steps": 10, "mean_grad_norm": [1, 1], "mean_update_norm": [1, 1],
             "mean_update_ratio": [0.01, 0.01], "mean_weight_norm": [1, 1], "max_update_ratio": [0.01, 0.01],
             "max_update_ratio_step": [0, 0], "max_relative_grad": [3e3, 2.0], "max_relative_grad_step": [4, 0]}
    f = one(diagnose({"update_ratio": table}), "exploding-gradient")
    assert f.evidence["largest_relative_grad_layer"] == "a.weight" and f.evidence["first_seen_step"] == 4
    table["max_relative_grad"] = [4.0, 2.0]
    assert diagnose({"update_ratio": table}) == []


def test_every_gradient_exactly_zero_is_an_error_and_names_the_parameters():
    zero = {"grad_norm/a.weight": flat(0.0), "grad_norm/a.bias": flat(0.0)}
    f = one(diagnose(scalars=zero), "zero-gradient")
    assert f.severity == "error" and f.evidence["parameters"] == ["a.bias", "a.weight"]
    assert f.evidence["first_seen_step"] == 0
    assert diagnose(scalars={**zero, "grad_norm/a.bias": flat(0.1)}) == []


# -- units ------------------------------------------------------------------------------------
def dead_units(dead=0, died=(), units=100, window=(170, 190, 3)):
    """A DeadUnits summary of one layer ``relu``: ``died``: [unit, share fired before, silent since,
    logged batches before]."""
    return {"dead_units": {"layers": {"relu": {
        "units": units, "dead": dead, "dead_units": list(range(dead)), "examples": 6400,
        "recent_dead": dead + len(died), "recent_window": list(window), "recent_dead_units": [],
        "fired_then_silent": [list(d) for d in died]}}}}


def test_a_layer_that_died_during_training_is_named_with_the_step_it_died():
    died = [[i, 1.0, 90 if i % 2 else 100, 9] for i in range(60)]
    f = one(diagnose(dead_units(died=died)), "dead-relu")
    assert f.severity == "warning" and f.evidence["died_at_step"] == 100
    assert f.evidence["layers"]["relu"]["died"] == 60 and "by step 100" in f.message
    sparse = [[i, ACTIVE_BEFORE / 2, 90, 9] for i in range(60)]  # units that rarely fired: sparse, not dead
    assert diagnose(dead_units(died=sparse)) == []
    early = [[i, 1.0, 10, 1] for i in range(60)]  # silent since the second log: too little seen before
    assert diagnose(dead_units(died=early)) == []


def test_a_dead_layer_explains_the_vanishing_gradient_below_it():
    structure = {"weights": ["fc1.weight", "fc2.weight", "fc3.weight"],
                 "sizes": {"fc1.weight": 100, "fc2.weight": 100, "fc3.weight": 100},
                 "layers": [["fc1", "Linear", ["fc1.weight"]], ["relu", "ReLU", []], ["fc2", "Linear", ["fc2.weight"]],
                            ["relu2", "ReLU", []], ["fc3", "Linear", ["fc3.weight"]]]}
    scalars = {"grad_norm/fc1.weight": flat(0.0), "grad_norm/fc2.weight": flat(1.0),
               "grad_norm/fc3.weight": flat(1.0)}
    findings = diagnose(dead_units(dead=100), scalars=scalars, structure=structure)
    dead, vanishing = one(findings, "dead-relu"), one(findings, "vanishing-gradient")
    assert dead.evidence["weights_below_dead_layers"] == ["fc1.weight"]
    assert vanishing.caused_by == "dead-relu" and dead.consequences == [vanishing]
    text = report(findings).splitlines()
    assert text[1].startswith("[warning] dead-relu") and any(line.startswith("    -> [") for line in text)
    assert dead.to_dict()["consequences"] == ["vanishing-gradient"]
    assert vanishing.to_dict()["caused_by"] == "dead-relu"


def test_saturation_of_hidden_layers_only_and_of_a_users_own_sigmoid():
    structure = {"weights": [], "sizes": {},
                 "layers": [["fc1", "Linear", []], ["act", "Tanh", []], ["fc2", "Linear", []], ["out", "Sigmoid", []]]}
    confident = {"activation_saturated_fraction/out": flat(0.9)}  # a confident classifier's output layer
    assert diagnose(scalars=confident, structure=structure) == []
    hidden = {"activation_saturated_fraction/act": flat(0.8)}
    assert ids(diagnose(scalars=hidden, structure=structure)) == ["saturation"]

    class MySigmoid(nn.Module):
        def forward(self, x):
            return 0.5 * (x / 2).tanh() + 0.5

    class ScaledTanh(nn.Tanh):
        pass

    assert squash_bounds(MySigmoid()) == (0.0, 1.0) and squash_bounds(ScaledTanh()) == (-1.0, 1.0)
    assert squash_bounds(nn.LogSigmoid()) is None and squash_bounds(nn.ReLU()) is None


# -- the loss curve ---------------------------------------------------------------------------
def windows(means):
    steps = [10 * i for i in range(len(means))]
    return {"train/loss_window_mean": list(zip(steps, means)), "train/loss_window_min": list(zip(steps, means)),
            "train/loss_window_max": list(zip(steps, means))}


def test_unstable_loss_and_a_healthy_noisy_decrease():
    bouncing = [2.3, 1.2, 0.8, 2.9, 0.9, 3.5, 1.0, 2.6]
    f = one(diagnose(scalars=windows(bouncing)), "unstable-loss")
    assert f.evidence["rise_step"] == 50 and f.evidence["low_before"] == (20, 0.8)
    noisy = [2.3, 1.1, 0.7, 0.75, 0.5, 0.55, 0.4, 0.42]
    assert diagnose(scalars=windows(noisy)) == []


def test_a_loss_stuck_at_chance_names_ln_of_the_classes():
    stuck = [2.303, 2.302, 2.303, 2.301, 2.302, 2.302]
    f = one(diagnose({"outputs": {"units": 10}}, scalars=windows(stuck)), "loss-not-decreasing")
    assert f.evidence["chance_level"] == pytest.approx(math.log(10)) and "chance level" in f.message
    assert diagnose(scalars=windows([2.3, 1.5, 1.0, 0.7, 0.5, 0.4])) == []
    assert diagnose(scalars=windows(stuck[:4])) == []  # too few logs to judge


def test_a_dense_loss_series_is_cut_at_the_logging_steps():
    """train.py's sink keeps every step's loss; the windows are those of the logged gradients."""
    dense = [(s, 2.3) for s in range(60)]
    scalars = {"train/loss": dense, "grad_norm/w": [(s, 1.0) for s in range(0, 60, 10)]}
    f = one(diagnose(scalars=scalars), "loss-not-decreasing")
    assert f.evidence["windows"] == 6 and f.evidence["steps"] == [0, 50]


def test_non_finite_at_the_output_is_put_under_the_output_activation():
    outputs = {"units": 10, "finite_logs": 3, "grad_logs": 3, "probability_rows": 0.0, "log_probability_rows": 0.0,
               "unit_interval": 0.2, "zero_fraction": 0.7, "negative_fraction": 0.0, "one_fraction": 0.0,
               "grad_row_sum": 1.0, "grad_zero_fraction": 0.9, "grad_single_entry_rows": 1.0,
               "logit_loss_fit": 0.3, "squared_error_fit": 0.2, "steps": [0, 20]}
    findings = diagnose({"outputs": outputs, "nonfinite": {"step": 3, "where": "loss", "name": "loss"}})
    cause, effect = one(findings, "improper-output-activation"), one(findings, "non-finite")
    assert "ReLU" in cause.message and effect.caused_by == cause.id and effect.evidence["first_seen_step"] == 3
    assert report(findings).splitlines()[1].startswith("[error] improper-output-activation")


# -- input and output ------------------------------------------------------------------------
def inputs(**kw):
    x = {"rms": 1.0, "mean": 0.0, "std": 1.0, "max_abs": 4.0, "constant_fraction": 0.0, "logs": 5,
         "steps": [0, 40], "shape": [64, 784]}
    x.update(kw)
    return {"inputs": x}


def test_abnormal_input_raw_pixels_and_constant_features():
    f = one(diagnose(inputs(rms=85.0, mean=33.0, std=78.0, max_abs=255.0)), "abnormal-input")
    assert "0-255" in f.message and f.evidence["rms"] == 85.0
    assert ids(diagnose(inputs(constant_fraction=0.97))) == ["abnormal-input"]
    assert diagnose(inputs()) == [] and diagnose(inputs(rms=0.33, max_abs=1.0)) == []


def output(**kw):
    o = {"units": 10, "finite_logs": 5, "grad_logs": 5, "probability_rows": 0.0, "log_probability_rows": 0.0,
         "unit_interval": 0.2, "zero_fraction": 0.0, "negative_fraction": 0.5, "one_fraction": 0.0,
         "grad_row_sum": 1e-7, "grad_zero_fraction": 0.0, "grad_single_entry_rows": 0.0,
         "logit_loss_fit": 1.0, "squared_error_fit": 0.1, "steps": [0, 40]}
    o.update(kw)
    return {"outputs": o}


def test_output_and_loss_mismatches_and_the_healthy_pairs():
    assert diagnose(output()) == []  # logits into cross-entropy
    log_softmax_nll = output(log_probability_rows=1.0, negative_fraction=1.0, grad_row_sum=1.0,
                             grad_single_entry_rows=1.0, logit_loss_fit=0.5)
    assert diagnose(log_softmax_nll) == []
    softmax_ce = diagnose(output(probability_rows=1.0, unit_interval=1.0, negative_fraction=0.0))
    assert ids(softmax_ce) == ["improper-loss"] and "softmax" in softmax_ce[0].message
    mse = diagnose(output(probability_rows=1.0, unit_interval=1.0, negative_fraction=0.0, logit_loss_fit=0.9,
                          squared_error_fit=1.0))
    assert ids(mse) == ["improper-loss"] and "squared error" in mse[0].message
    redundant = diagnose(output(log_probability_rows=1.0, negative_fraction=1.0))
    assert ids(redundant) == ["improper-loss"] and ids(redundant, "warning") == []  # harmless: info
    single = one(diagnose(output(units=1, one_fraction=1.0, probability_rows=1.0)), "improper-output-activation")
    assert single.severity == "error" and single.evidence["kind"] == "single-unit softmax"
    nll_linear = one(diagnose(output(grad_row_sum=1.0, grad_single_entry_rows=1.0, logit_loss_fit=0.3)),
                     "improper-output-activation")
    assert "linear" in nll_linear.message
    relu_logits = one(diagnose(output(zero_fraction=0.4, negative_fraction=0.0)), "improper-output-activation")
    assert relu_logits.severity == "warning" and "ReLU" in relu_logits.message


def test_update_ratio_imbalance_leaves_out_embeddings_and_zero_initialised_weights():
    structure = {"weights": ["emb.weight", "pos", "fc.weight", "head.weight"], "sizes": {},
                 "layers": [["emb", "Embedding", ["emb.weight"]], ["fc", "Linear", ["fc.weight"]],
                            ["head", "Linear", ["head.weight"]]]}
    table = {"layers": ["emb.weight", "pos", "fc.weight", "head.weight"], "steps": 50,
             "mean_grad_norm": [1, 1, 1, 1], "mean_update_norm": [0.01, 0.01, 0.03, 0.03],
             "mean_update_ratio": [3e-4, 1e30, 0.003, 0.003], "mean_weight_norm": [30.0, 0.0, 10.0, 10.0]}
    assert diagnose({"update_ratio": table}, structure=structure) == []
    table["mean_update_norm"][3] = 30.0  # head moves 1000x faster than fc relative to its size
    f = one(diagnose({"update_ratio": table}, structure=structure), "update-ratio-imbalance")
    assert (f.evidence["fastest"], f.evidence["slowest"]) == ("head.weight", "fc.weight")
    assert f.evidence["left_out"] == ["emb.weight"]


# -- links -----------------------------------------------------------------------------------
def test_single_unit_softmax_leads_and_the_frozen_weights_follow():
    summary = {**output(units=1, one_fraction=1.0, probability_rows=1.0)}
    scalars = {"grad_norm/fc.weight": flat(0.0), "grad_norm/fc.bias": flat(0.0),
               **windows([0.69, 0.69, 0.69, 0.69, 0.69, 0.69])}
    findings = diagnose(summary, scalars=scalars)
    root = one(findings, "improper-output-activation")
    assert {c.id for c in root.consequences} == {"zero-gradient", "loss-not-decreasing"}
    lines = report(findings).splitlines()
    assert lines[1].startswith("[error] improper-output-activation")
    assert [line.split("]")[1].split(":")[0].strip() for line in lines if line.startswith("    -> [")] == \
        [c.id for c in root.consequences]


def test_causes_are_listed_before_what_they_explain_so_links_are_one_level_deep():
    order = list(CAUSES)
    for i, cause in enumerate(order):
        for effect, _ in CAUSES[cause]:
            assert effect not in order or order.index(effect) > i, (cause, effect)
    a, b = Finding("exploding-gradient", "warning", "a"), Finding("non-finite", "error", "b")
    link([b, a])
    assert b.caused_by == "exploding-gradient" and report([b, a]).splitlines()[1].startswith("[warning] exploding")


def test_a_finding_of_the_check_is_not_repeated_by_training():
    check = Finding("abnormal-input", "warning", "before training", {"rms": 85.0})
    findings = diagnose(inputs(rms=85.0, mean=33.0, max_abs=255.0), checks=[check])
    f = one(findings, "abnormal-input")
    assert f.message == "before training" and f.evidence["in_training"]["rms"] == 85.0


def test_structure_reads_sizes_and_the_layers_below():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    s = describe(model)
    assert s["weights"] == ["0.weight", "2.weight", "4.weight"] and s["sizes"]["2.weight"] == 64
    assert below(s, "3") == ["0.weight", "2.weight"] and below(s, "1") == ["0.weight"]
