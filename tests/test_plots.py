"""The figures (experiments/plots.py) and the gradient-flow picture (experiments/gradient_flow.py),
drawn from real numbers: Keras' own trained cnn on real MNIST, a real training loop's records."""
import math
from pathlib import Path

import pytest
import torch

import models
from experiments.batches import to_float
from experiments.gradient_flow import FLOW, GradientFlowSink, layer_flows, layer_histogram
from experiments.plots import (clip_bins, compare_figure, frozen_inputs_figure, split_pairs, weight_change_figure,
                               zero_gradient_figure)
from experiments.zero_grad_scan import scan_zero_gradients
from models.losses import LOSSES
from probes import GradientStats, MemorySink, Monitor, Prefixed, TensorBoardSink
from probes.sinks import png_size
from conftest import read_events

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "keras"
EPS = 1e-7


@pytest.fixture(scope="module")
def keras_scan(mnist):
    """The pair scan of Keras' own 2-epoch cnn on 200 test images: a fifth of the pairs clipped."""
    if not (FIXTURES / "weights_A.npz").exists():
        pytest.fail(f"Keras fixtures are needed at {FIXTURES}")
    model = models.load_keras_weights(models.build("cnn"), FIXTURES / "weights_A.npz")
    scan = scan_zero_gradients(model, to_float(mnist["test"].images[:200]), LOSSES["keras"]["categorical"])
    # as experiments/zero_grad_scan.py hands them to the figure
    return scan["target_prob"].clamp_min(1e-45).log10().flatten().tolist(), scan["result"].all_zero.flatten().tolist()


def test_bins_have_edges_exactly_at_the_clip():
    edges = clip_bins(-11.3, EPS)
    assert math.log10(EPS) in edges and edges[-1] == math.log10(1 - EPS)
    assert edges[0] <= -11.3 and edges == sorted(edges)
    assert clip_bins(-3.0, EPS)[:2] == [math.log10(EPS) - 0.25, math.log10(EPS)]  # no pair below: one empty bin


def test_no_pair_is_drawn_on_the_wrong_side_of_the_clip(keras_scan):
    import numpy as np

    log10_prob, all_zero = keras_scan
    other, zero, tail = split_pairs(log10_prob, all_zero, EPS)
    assert zero and other and len(other) + len(zero) + len(tail) == len(log10_prob)
    edges = clip_bins(min(log10_prob), EPS)
    line = edges.index(math.log10(EPS))
    blue, _ = np.histogram(other, bins=edges)
    red, _ = np.histogram(zero, bins=edges)
    assert blue[:line].sum() == 0 and red[line:].sum() == 0  # every bin is one colour, split at the line
    assert blue.sum() == len(other) and red.sum() == len(zero)  # and every pair of the main panel is drawn
    assert all(tail)  # the pairs above 1 - 1e-7 (the right panel) are all-zero too


def test_pairs_above_the_upper_clip_go_to_their_own_panel():
    hi = math.log10(1 - EPS)
    other, zero, tail = split_pairs([-8.0, -3.0, hi, hi / 2, 0.0], [True, False, False, True, True], EPS)
    assert other == [-3.0, hi] and zero == [-8.0] and tail == [True, True]


def test_every_figure_is_1000_wide_and_600_high(keras_scan):
    log10_prob, all_zero = keras_scan
    series = [(s, 2.0 / (s + 1)) for s in range(50)]
    pngs = {
        "zero_gradients": zero_gradient_figure(log10_prob, all_zero, EPS, "title"),
        "weight_change": weight_change_figure({"fc1": series, "fc2": series}, series, "title"),
        "compare": compare_figure({"variant 1": series, "variant 2": series}, "title"),
    }
    for name, png in pngs.items():
        assert png_size(png) == (1000, 600), name
    frozen = [i % 28 < 3 for i in range(784)]
    assert png_size(frozen_inputs_figure(frozen, frozen)) == (1000, 500)  # three square maps


def test_layer_histogram_keeps_each_layers_value_after_tensorboards_rebinning():
    values = [0.5, 0.0, 2.0, 1e-3, 0.25, 1.0, 0.125]  # seven layers
    h = layer_histogram("gradient_flow/rms", 3, values)
    # TensorBoard (2.21) turns bucket i into [left, right] with left = the previous limit (min first)
    # and right = the next limit (max last), then re-bins into 30 equal buckets over [min, max]
    lefts = [h.min] + h.bucket_limits[:-1]
    rights = h.bucket_limits[:-1] + [h.max]
    width = (h.max - h.min) / 30
    for b in range(30):
        lo, hi = h.min + b * width, h.min + (b + 1) * width
        height = sum(c * max(0.0, min(hi, r) - max(lo, l)) / (r - l) for l, r, c in zip(lefts, rights, h.bucket_counts))
        layer = int(lo + 1e-9)
        assert height == pytest.approx(values[layer] if layer < len(values) else 0.0, abs=1e-12), b


def test_gradient_flow_from_a_training_loop(tmp_path):
    """A real loop (Linear-ReLU-Linear-Tanh-Linear): the picture and the three profiles at each logging
    step, layers in the model's order, numbers equal to the gradients' own, read back from TensorBoard."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16), torch.nn.Tanh(),
                                torch.nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    sink = GradientFlowSink(TensorBoardSink(str(tmp_path)), [n for n, _ in model.named_parameters()],
                            path=tmp_path / "gradient_flow.png")
    monitor = Monitor([GradientStats()], sink=sink, every=2)
    x, y = torch.randn(64, 20), torch.randint(0, 3, (64,))
    with monitor.attach(model):
        for _ in range(5):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            optimizer.step()
            monitor.step()
    sink.close()
    events = read_events(tmp_path)
    assert [e.step for e in events.Images(FLOW)] == [0, 2, 4]
    assert (tmp_path / "gradient_flow.png").read_bytes()[:4] == b"\x89PNG"
    rms = events.Histograms(f"{FLOW}/rms")[-1].histogram_value
    k = 30 // 3  # three weights: each spans ten of TensorBoard's buckets
    want = [float(grads[n].pow(2).mean().sqrt()) for n in ("0.weight", "2.weight", "4.weight")]  # input first
    assert [c / k for c in rms.bucket[:3]] == pytest.approx(want, rel=1e-5)
    top = events.Histograms(f"{FLOW}/max_abs")[-1].histogram_value
    assert [c / k for c in top.bucket[:3]] == pytest.approx(
        [float(grads[n].abs().max()) for n in ("0.weight", "2.weight", "4.weight")], rel=1e-5)
    zero = events.Histograms(f"{FLOW}/zero_fraction")[-1].histogram_value
    assert [c / k for c in zero.bucket[:3]] == pytest.approx(
        [float((grads[n] == 0).float().mean()) for n in ("0.weight", "2.weight", "4.weight")], abs=1e-6)


def test_prefixed_runs_get_a_picture_each_and_backward_order_is_reversed():
    """scaled-conv --compare logs through Prefixed("variantN/"): one picture per variant. Without
    an order the layers come input first from the gradients' backward arrival order."""
    memory = MemorySink()
    sink = GradientFlowSink(memory)
    monitors = []
    for label in ("1", "2"):
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        monitors.append((model, Monitor([GradientStats()], sink=Prefixed(sink, f"variant{label}/"), every=1)))
    for model, monitor in monitors:
        with monitor.attach(model):
            model(torch.randn(16, 4)).pow(2).mean().backward()
            monitor.step()
    assert set(memory.images) == {"variant1/gradient_flow", "variant2/gradient_flow"}
    records = [r for tag, rows in memory.histograms.items() for _, r in rows if tag.startswith("variant1/grad/")]
    flows = layer_flows(records)
    assert [layer.name for layer in flows["variant1/"][1]] == ["0.weight", "2.weight"]
