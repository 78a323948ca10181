"""The real TensorBoard server serves what train.py wrote (checked through its HTTP API)."""
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from conftest import run_cli

pytestmark = pytest.mark.slow  # starts a TensorBoard server (test_cli reads the same events fast)
START_TIMEOUT = 600  # seconds for the server to answer: a safety net, a busy machine is slow to start it


def free_port() -> int:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    except OSError as exc:
        pytest.skip(f"cannot open a loopback port: {exc}")


def get_json(base: str, path: str, **params):
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=120) as response:
        return json.loads(response.read())


def tensorboard_command() -> list:
    exe = shutil.which("tensorboard", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "tensorboard.main"]


@pytest.fixture(scope="module")
def served_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("tb") / "run"
    proc = run_cli("--model", "cnn", "--dry-run", "--log-every", "1", "--test-size", "100", "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    port = free_port()
    server = subprocess.Popen(tensorboard_command() + ["--logdir", str(run_dir), "--host", "127.0.0.1",
                                                       "--port", str(port), "--reload_interval", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                # the findings text is written last: once it is served, the whole file has been read
                if "findings/text_summary" in get_json(base, "/data/plugin/text/tags").get(".", []):
                    break
            except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
                pass
            if server.poll() is not None:
                pytest.fail(f"tensorboard exited: {server.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"tensorboard did not serve {run_dir} within {START_TIMEOUT}s")
            time.sleep(0.5)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()


def test_scalars_are_served_with_their_values(served_run):
    tags = get_json(served_run, "/data/plugin/scalars/tags")["."]
    assert {"train/loss", "grad_norm/conv1.weight", "pair_scan/all_zero_fraction", "epoch/test_accuracy"} <= set(tags)
    points = get_json(served_run, "/data/plugin/scalars/scalars", run=".", tag="train/loss")
    assert [p[1] for p in points] == [0, 1, 2, 3]  # (wall time, step, value): 2 epochs x 2 dry-run steps
    assert all(p[2] > 0 for p in points)


def test_histograms_are_served(served_run):
    tags = get_json(served_run, "/data/plugin/histograms/tags")["."]
    assert {"grad/fc1.weight", "activations/relu1", "pair_scan/log10_target_prob"} <= set(tags)
    data = get_json(served_run, "/data/plugin/histograms/histograms", run=".", tag="grad/fc1.weight")
    assert len(data) == 4 and len(data[0][2]) > 0  # (wall time, step, buckets)


def test_text_is_served(served_run):
    tags = get_json(served_run, "/data/plugin/text/tags")["."]
    assert "summary/text_summary" in tags  # add_text("summary") is stored under this tag
    text = get_json(served_run, "/data/plugin/text/text", run=".", tag="summary/text_summary")
    assert "(image, target) pairs" in json.dumps(text)


def test_images_are_served(served_run):
    tags = get_json(served_run, "/data/plugin/images/tags")["."]
    assert "zero_gradients" in tags
    (entry,) = get_json(served_run, "/data/plugin/images/images", run=".", tag="zero_gradients")
    url = f"{served_run}/data/plugin/images/individualImage?{entry['query']}"
    with urllib.request.urlopen(url, timeout=120) as response:
        assert response.read(8) == b"\x89PNG\r\n\x1a\n"


def test_custom_scalars_open_on_the_question_with_its_points(served_run):
    layout = get_json(served_run, "/data/plugin/custom_scalars/layout")
    titles = [c["title"] for c in layout["category"]]
    assert "1e-7 clip" in titles[0] and titles[1].startswith("gradient flow")
    first = layout["category"][0]["chart"][0]["multiline"]["tag"]
    assert first == ["^pair_scan/all_zero_fraction$", "^pair_scan/clipped_fraction$"]
    served = get_json(served_run, "/data/plugin/custom_scalars/scalars", run=".", tag=first[0])
    assert served["regex_valid"] and list(served["tag_to_events"]) == ["pair_scan/all_zero_fraction"]
    points = served["tag_to_events"]["pair_scan/all_zero_fraction"]  # (wall time, step, value)
    assert [p[1] for p in points] == [0, 1, 2, 3, 4]  # every logging step and each epoch's end: a curve
    # epoch/* tags first came at step 2, after the layout of step 0: the server shows the last one written
    assert any(c["title"].startswith("epoch:") for category in layout["category"] for c in category["chart"])
    for category in layout["category"]:  # no chart names a tag the run lacks
        for chart in category["chart"]:
            for regex in chart["multiline"]["tag"]:
                found = get_json(served_run, "/data/plugin/custom_scalars/scalars", run=".", tag=regex)
                assert found["tag_to_events"], (chart["title"], regex)
