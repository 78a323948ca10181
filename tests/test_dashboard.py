"""The Custom Scalars dashboard: the question's charts first, then gradient flow input to output,
read back from the event files by TensorBoard's own reader and by the plugin's own code."""
import json
import re

import pytest
import torch
from torch import nn

import probes
from conftest import read_events, read_summary, run_cli
from probes.layout import GRADIENT_FLOW_TITLE, LOSS_TITLE, REST_TITLE, UPDATES_TITLE, Category, Dashboard, chart
from probes.records import HostScalar
from probes.sinks import TensorBoardSink

CONFIG = "custom_scalars__config__"


def last_layout(run_dir):
    """The last layout the run wrote, parsed from the event file (what the plugin shows)."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    events = read_events(run_dir).Tensors(CONFIG)
    return layout_pb2.Layout.FromString(events[-1].tensor_proto.string_val[0])


def served_layout(run_dir) -> dict:
    """The layout as TensorBoard's custom-scalars plugin answers /data/plugin/custom_scalars/layout."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.custom_scalar.custom_scalars_plugin import CustomScalarsPlugin

    multiplexer = plugin_event_multiplexer.EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(run_dir))
    multiplexer.Reload()
    provider = data_provider.MultiplexerDataProvider(multiplexer, str(run_dir))
    plugin = CustomScalarsPlugin(base_plugin.TBContext(logdir=str(run_dir), data_provider=provider,
                                                       plugin_name_to_instance={}))
    body = plugin.layout_impl(context.RequestContext(), "")
    return json.loads(body) if isinstance(body, (str, bytes)) else body


def tags_of(c) -> list:
    """A chart's tags from its exact-match regular expressions."""
    out = []
    for regex in c.multiline.tag:
        assert regex.startswith("^") and regex.endswith("$"), regex
        out.append(re.sub(r"\\(.)", r"\1", regex[1:-1]))
    return out


def charts(layout) -> dict:
    return {c.title: tags_of(c) for category in layout.category for c in category.chart}


def test_layers_are_ordered_input_to_output_whatever_order_the_records_arrive_in():
    board = Dashboard()
    board.pin(Category("the question", (chart("answer", ["q/a", "q/b"]),)))
    # one logging step as a monitor hands it over: forward statistics, then gradients output first
    assert board.observe(["train/loss", "activation_zero_fraction/fc1", "activation_zero_fraction/act",
                          "activation_zero_fraction/fc2",
                          "output_grad_norm/fc2", "output_grad_norm/act", "output_grad_norm/fc1",
                          "grad_norm/fc2.bias", "grad_norm/fc2.weight", "grad_norm/fc1.weight", "grad_norm/fc1.bias",
                          "update_ratio/fc1.weight", "update_ratio/fc2.weight", "q/a", "custom/thing"])
    assert not board.observe(["train/loss", "grad_norm/fc1.weight"])  # nothing new: no rewrite
    cats = board.categories()
    assert [c.title for c in cats] == ["the question", GRADIENT_FLOW_TITLE, LOSS_TITLE, UPDATES_TITLE, REST_TITLE]
    assert [c.closed for c in cats] == [False, False, False, False, True]
    flow = {c.title.split(":")[0]: c.tags for c in cats[1].charts}
    assert list(flow) == ["grad_norm", "output_grad_norm"]
    assert flow["grad_norm"] == ("grad_norm/fc1.weight", "grad_norm/fc1.bias", "grad_norm/fc2.weight",
                                 "grad_norm/fc2.bias")
    assert flow["output_grad_norm"] == ("output_grad_norm/fc1", "output_grad_norm/act", "output_grad_norm/fc2")
    rest = [t for c in cats[4].charts for t in c.tags]
    assert "custom/thing" in rest and "q/a" not in rest  # a pinned tag is not shown twice


def test_variants_behind_a_prefix_get_a_chart_each():
    board = Dashboard()
    board.observe([f"variant{v}/{kind}/{p}" for v in (1, 2) for kind in ("update_ratio", "grad_norm")
                   for p in ("conv1.weight", "conv2.weight")])
    titles = [c.title.split(":")[0] for cat in board.categories() for c in cat.charts]
    assert titles == ["variant1/grad_norm", "variant2/grad_norm", "variant1/update_ratio", "variant2/update_ratio"]


def test_watch_writes_a_layout_that_tensorboard_reads_back(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with probes.watch(model, str(tmp_path), every=2, optimizer=optimizer) as monitor:
        for _ in range(5):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(torch.randn(16, 20)), torch.randint(0, 3, (16,)))
            loss.backward()
            monitor.log_loss(loss)
            optimizer.step()
    layout = last_layout(tmp_path)
    assert [c.title for c in layout.category][:2] == [GRADIENT_FLOW_TITLE, LOSS_TITLE]
    shown = charts(layout)
    (grad_norm,) = [tags for title, tags in shown.items() if title.startswith("grad_norm:")]
    assert grad_norm == [f"grad_norm/{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")]  # input to output
    (output_grad,) = [tags for title, tags in shown.items() if title.startswith("output_grad_norm:")]
    assert output_grad == [f"output_grad_norm/{i}" for i in range(5)]
    scalars = set(read_events(tmp_path).Tags()["scalars"])
    assert {t for tags in shown.values() for t in tags} == scalars  # every chart draws, every scalar is shown
    served = served_layout(tmp_path)  # the plugin's own reading: the same layout
    assert [c["title"] for c in served["category"]] == [c.title for c in layout.category]


def test_the_plugin_shows_the_last_layout_written_with_tags_that_came_later(tmp_path):
    sink = TensorBoardSink(str(tmp_path))
    sink.write([HostScalar("grad_norm/a.weight", 0, 1.0)])
    sink.pin(Category("the question", (chart("answer", ["q/answer"]),)))
    sink.write([HostScalar("grad_norm/a.weight", 1, 1.0), HostScalar("q/answer", 1, 0.5)])
    sink.write([HostScalar("late/tag", 7, 2.0)])
    sink.close()
    written = read_events(tmp_path).Tensors(CONFIG)
    assert [e.step for e in written] == [0, 0, 7]  # at the first tag, the pin, the late tag; q/answer was pinned
    served = served_layout(tmp_path)
    assert [c["title"] for c in served["category"]] == ["the question", GRADIENT_FLOW_TITLE, REST_TITLE]
    assert served["category"][-1]["chart"][0]["multiline"]["tag"] == ["^late/tag$"]


def test_a_sink_without_a_layout_writes_none(tmp_path):
    sink = TensorBoardSink(str(tmp_path), layout=False)
    sink.write([HostScalar("grad_norm/a.weight", 0, 1.0)])
    sink.pin(Category("the question", (chart("answer", ["q/answer"]),)))
    sink.close()
    assert CONFIG not in read_events(tmp_path).Tags()["tensors"]


def test_cnn_dashboard_opens_on_the_clip_and_the_scan_draws_a_curve(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("--model", "cnn", "--dry-run", "--log-every", "1", "--test-size", "100", "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    layout, events = last_layout(run_dir), read_events(run_dir)
    question, flow = layout.category[0], layout.category[1]
    assert "1e-7 clip" in question.title and flow.title == GRADIENT_FLOW_TITLE
    assert [tags_of(c) for c in question.chart] == [
        ["pair_scan/all_zero_fraction", "pair_scan/clipped_fraction"],
        ["pair_scan/log10_min_target_prob", "pair_scan/log10_clip"]]
    (grad_norm,) = [tags_of(c) for c in flow.chart if c.title.startswith("grad_norm:")]
    assert [t.split("/")[1].split(".")[0] for t in grad_norm][::2] == ["conv1", "bn1", "conv2", "bn2", "fc1", "bn3",
                                                                       "fc2"]
    # a point at every logging step (0, 1, 3) and after each epoch (2, 4), each step once
    assert [e.step for e in events.Scalars("pair_scan/all_zero_fraction")] == [0, 1, 2, 3, 4]
    assert {e.value for e in events.Scalars("pair_scan/log10_clip")} == {-7.0}
    smallest = [e.value for e in events.Scalars("pair_scan/log10_min_target_prob")]
    assert all(-45 <= v < 0 for v in smallest)
    summary = read_summary(run_dir)  # summary.json keeps the epoch-end scan's facts, as before
    assert summary["pair_scan"]["pairs"] == 80
    assert summary["pair_scan"]["all_zero_fraction"] == events.Scalars("pair_scan/all_zero_fraction")[-1].value


def test_the_vanishing_ratio_reads_only_its_logging_window():
    from experiments.vanishing import window_mean

    series = [(s, float(s)) for s in range(10)]
    assert window_mean(series, 5, 9) == 7.0 and window_mean(series, 0, 0) == 0.0
    assert window_mean(series, 20, 29) != window_mean(series, 20, 29)  # nothing logged there: NaN


@pytest.mark.slow
@pytest.mark.parametrize("model, title", [(["deep-sigmoid"], "how far each layer's weights move"),
                                          (["dense-mlp"], "never changed"),
                                          (["scaled-conv", "--compare"], "variants 1, 2, 3")])
def test_each_question_opens_on_charts_of_tags_it_logs(tmp_path, model, title):
    run_dir = tmp_path / "run"
    proc = run_cli("--model", *model, "--dry-run", "--log-every", "1", "--test-size", "100", "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    layout, events = last_layout(run_dir), read_events(run_dir)
    assert title in layout.category[0].title and layout.category[1].title == GRADIENT_FLOW_TITLE
    pinned = [t for c in layout.category[0].chart for t in tags_of(c)]
    for tag in pinned:  # no empty chart: every series has a point at each logging step
        assert len(events.Scalars(tag)) >= 2, tag
    if model == ["dense-mlp"]:  # the answer: the three lines are one
        frozen, zero, both = ([e.value for e in events.Scalars(t)] for t in pinned)
        assert frozen == zero == both and frozen[0] > 0
