"""The ports compute what real Keras computes, on Keras' own weights (``shared/fixtures/keras``).

Each fixture holds a model's ``get_weights()`` (Keras 3.15 / TF 2.21) and, for the first 32 test
images in inference mode, Keras' logits, probabilities, per-example losses and the gradient of
the mean loss w.r.t. every trainable weight, for Keras 2's clipped loss (``clipped``, our
``keras2``) and Keras 3's from-logits loss (``native``, our ``keras3``).

Relative error of a tensor ``a`` against Keras' ``b`` is ``max|a - b| / max|b|``. Torch
gradients are put into Keras' layout here, independently of the loader (OIHW -> HWIO,
(out, in) -> (in, out), fc1's columns (c, h, w) -> rows (h, w, c)).

Largest errors measured (torch 2.13 CPU, float32):

    model      loss     logits   loss (tensor)  mean loss  gradient (worst weight)
    cnn        clipped  3.5e-7   3.7e-6         2.3e-6     5.7e-6 (conv1/bias)
    cnn        native   3.5e-7   3.7e-6         3.0e-8     2.0e-5 (conv1/bias)
    dense-mlp  clipped  6.8e-7   9.9e-8         4.8e-8     3.1e-7 (fc1/bias)
    dense-mlp  native   6.8e-7   9.9e-8         4.5e-8     2.9e-7 (fc2/kernel)

Per example, a loss near 0 cannot match to 1e-5 relative in float32, in any framework: it
is ``-log p`` or ``log(sum exp)`` of a float32 number next to 1, so it moves in steps of
``spacing(float32(1)) = 1.19e-7`` (half that below 1). The cnn batch has losses down to
1.2e-7; both frameworks land up to one such step apart (e.g. 7.15e-7 vs 8.34e-7), and our
loss applied to Keras' *own* logits shows the same differences, so they come from the loss
arithmetic, not from the port. Each example must match within 1e-5 relative plus one step.
Against a float64 torch run on the same weights, Keras' float32 gradients are off by up to
3.4e-5 and ours by up to 1.7e-5: the gradient differences are float32 rounding on both sides.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import models
from conftest import REPO, read_summary, run_cli
from models import KerasWeightsError, load_keras_weights
from models.losses import LOSSES

FIXTURES = REPO.parent / "shared" / "fixtures" / "keras"
CASES = {"cnn": ("weights_A.npz", "grads_A.npz"), "dense-mlp": ("weights_C.npz", "grads_C.npz")}
KERAS_LOSS = {"clipped": "keras2", "native": "keras3"}  # fixture tag -> our loss name
OUTPUT_RTOL, LOSS_RTOL, GRAD_RTOL = 1e-5, 1e-5, 1e-4
F32_STEP = float(np.spacing(np.float32(1)))  # 1.19e-7: resolution of a float32 loss near 0
TORCH_ATTR = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}


def fixture(name: str) -> Path:
    path = FIXTURES / name
    if not path.exists():
        pytest.fail(f"Keras fixtures are needed at {FIXTURES} (the shared folder beside the repository)")
    return path


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def loaded(model_name: str) -> nn.Module:
    return load_keras_weights(models.build(model_name), fixture(CASES[model_name][0])).eval()


def batch(model_name: str):
    ref = np.load(fixture(CASES[model_name][1]))
    x = torch.from_numpy(ref["x"])
    x = x.permute(0, 3, 1, 2) if x.dim() == 4 else x.reshape(-1, 1, 28, 28)  # NHWC / flat -> NCHW
    return x.contiguous(), torch.from_numpy(ref["y_onehot"]), ref


def to_keras_layout(model_name: str, layer: str, grad: torch.Tensor) -> np.ndarray:
    if grad.dim() == 4:  # OIHW -> HWIO
        return grad.permute(2, 3, 1, 0).numpy()
    if grad.dim() == 2 and model_name == "cnn" and layer == "fc1":  # (128, c*h*w) -> rows (h, w, c)
        return grad.reshape(128, 64, 12, 12).permute(2, 3, 1, 0).reshape(64 * 12 * 12, 128).numpy()
    return grad.T.numpy() if grad.dim() == 2 else grad.numpy()


@pytest.mark.parametrize("model_name", CASES)
def test_logits_and_probabilities_match_keras(model_name):
    model = loaded(model_name)
    x, _, ref = batch(model_name)
    with torch.no_grad():
        logits = model(x)
    err_logits, err_probs = rel_err(logits, ref["logits"]), rel_err(torch.softmax(logits, 1), ref["probs"])
    print(f"{model_name}: logits rel err {err_logits:.1e}, probabilities {err_probs:.1e}")
    assert err_logits <= OUTPUT_RTOL and err_probs <= OUTPUT_RTOL
    assert torch.equal(logits.argmax(1), torch.from_numpy(ref["probs"].argmax(1)))


@pytest.mark.parametrize("model_name", CASES)
@pytest.mark.parametrize("tag", KERAS_LOSS)
def test_losses_and_gradients_match_keras(model_name, tag):
    model = loaded(model_name)
    x, y, ref = batch(model_name)
    losses = LOSSES[KERAS_LOSS[tag]]["categorical"](model(x), y)
    losses.mean().backward()
    keras_losses = ref[f"loss_{tag}"].astype(np.float64)
    ours = losses.detach().double().numpy()

    assert rel_err(ours, keras_losses) <= LOSS_RTOL
    assert abs(ours.mean() - float(ref[f"mean_loss_{tag}"])) <= LOSS_RTOL * float(ref[f"mean_loss_{tag}"])
    per_example = np.abs(ours - keras_losses) / (LOSS_RTOL * keras_losses + F32_STEP)
    assert per_example.max() <= 1, f"example {per_example.argmax()}: {ours[per_example.argmax()]} vs Keras " \
                                   f"{keras_losses[per_example.argmax()]}"

    worst = (0.0, "")
    for i, name in enumerate(ref["trainable_names"]):
        layer, role = str(name).split("/")
        grad = getattr(getattr(model, layer), TORCH_ATTR[role]).grad
        err = rel_err(to_keras_layout(model_name, layer, grad), ref[f"g{tag}{i}"])
        assert err <= GRAD_RTOL, f"{name}: gradient rel err {err:.2e}"
        worst = max(worst, (err, str(name)))
    print(f"{model_name} {tag}: loss rel err {rel_err(ours, keras_losses):.1e}, "
          f"largest gradient rel err {worst[0]:.1e} ({worst[1]})")


def test_keras_own_logits_show_the_same_per_example_differences():
    """Why per-example losses need the float32 step: the loss arithmetic, not the port."""
    _, y, ref = batch("cnn")
    from_keras_logits = LOSSES["keras3"]["categorical"](torch.from_numpy(ref["logits"]), y).double().numpy()
    keras = ref["loss_native"].astype(np.float64)
    assert (np.abs(from_keras_logits - keras) / keras).max() > LOSS_RTOL  # off by up to a step near 0
    assert np.abs(from_keras_logits - keras).max() <= F32_STEP * 1.01


def test_flatten_permutation_is_what_makes_fc1_right():
    """Loading fc1 without the NHWC -> NCHW row permutation gives wrong outputs."""
    class Unpermuted(models.KerasCNN):
        keras_flatten = {"fc1": None}

    x, _, ref = batch("cnn")
    model = load_keras_weights(Unpermuted(), fixture("weights_A.npz")).eval()
    with torch.no_grad():
        assert rel_err(model(x), ref["logits"]) > 0.1


# -- wrong sources: one line, naming the problem, and the model untouched -------------------

def snapshot(model: nn.Module):
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_refused(model: nn.Module, source, *needles):
    before = snapshot(model)
    with pytest.raises(KerasWeightsError) as info:
        load_keras_weights(model, source)
    message = str(info.value)
    assert "\n" not in message and all(n in message for n in needles), message
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "partially loaded"
    return message


def npz_with(tmp_path, name="w.npz", drop=(), **changes):
    contents = dict(np.load(fixture("weights_A.npz")))
    for key in drop:
        contents.pop(key)
    contents.update(changes)
    path = tmp_path / name
    np.savez(path, **contents)
    return path


def test_other_models_weights_are_refused():
    assert_refused(models.build("dense-mlp"), fixture("weights_A.npz"), "weights_A.npz", "20 Keras arrays",
                   "DenseMLP", "takes 6", "fc1.weight")
    assert_refused(models.build("cnn"), fixture("weights_C.npz"), "weights_C.npz", "6 Keras arrays",
                   "KerasCNN", "takes 20", "conv1.weight", "(784, 512)")


def test_wrong_shape_names_the_layer_and_loads_nothing(tmp_path):
    w = np.load(fixture("weights_A.npz"))
    path = npz_with(tmp_path, w12=w["w12"][:4608])  # the fixture records its shapes
    assert_refused(models.build("cnn"), path, "w.npz", "w12", "has shape (4608, 128) but the file says")
    # without the file's own shape record, the mismatch is found against the model
    path = npz_with(tmp_path, "w2.npz", drop=("shapes",), w12=w["w12"][:4608])
    msg = assert_refused(models.build("cnn"), path, "fc1.weight", "(9216, 128)", "w12 ('fc1/kernel')", "(4608, 128)")
    print(msg)


def test_missing_key_is_named(tmp_path):
    assert_refused(models.build("cnn"), npz_with(tmp_path, drop=("w7",)), "missing w7")


def test_transposed_kernel_is_refused(tmp_path):
    w = np.load(fixture("weights_A.npz"))
    path = npz_with(tmp_path, drop=("shapes",), w18=np.ascontiguousarray(w["w18"].T))  # torch layout by mistake
    assert_refused(models.build("cnn"), path, "fc2.weight", "(128, 10)", "(10, 128)")


def test_truncated_and_random_files_are_one_line(tmp_path):
    data = fixture("weights_A.npz").read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    assert_refused(models.build("cnn"), truncated, "truncated.npz", "truncated or corrupt")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    assert_refused(models.build("cnn"), junk, "junk.npz", "neither an .npz")
    assert_refused(models.build("cnn"), tmp_path / "absent.npz", "absent.npz", "cannot read")
    (tmp_path / "empty.npz").write_bytes(b"")
    assert_refused(models.build("cnn"), tmp_path / "empty.npz", "empty.npz", "empty file")


def test_corrupt_member_inside_npz_is_one_line(tmp_path):
    """Central directory intact, a member's bytes damaged: caught when read, not later."""
    data = bytearray(fixture("weights_A.npz").read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)
    path = tmp_path / "damaged.npz"
    path.write_bytes(bytes(data))
    assert_refused(models.build("cnn"), path, "damaged.npz", "truncated or corrupt")


def test_batchnorm_epsilon_must_agree(tmp_path):
    path = npz_with(tmp_path, bn_epsilon=np.float32(1e-5))  # torch's default, not Keras'
    assert_refused(models.build("cnn"), path, "bn1", "eps 0.001", "epsilon 1e-05")


def test_list_of_arrays_loads_like_the_file():
    w = np.load(fixture("weights_A.npz"))
    from_list = load_keras_weights(models.build("cnn"), [w[f"w{i}"] for i in range(20)])
    from_file = loaded("cnn")
    assert all(torch.equal(a, b) for a, b in zip(from_list.state_dict().values(), from_file.state_dict().values()))
    msg = assert_refused(models.build("cnn"), [w[f"w{i}"] for i in range(19)], "19 Keras arrays", "takes 20")
    assert "array[" not in msg  # all 19 shapes fit: no first mismatch to report


# -- layouts on a model with a non-square map, without fixtures -----------------------------

class NonSquare(nn.Module):
    """(B, 2, 4, 6) -> conv 3 -> (B, 3, 4, 6) -> BN -> flatten 72 -> fc 5."""

    keras_flatten = {"fc": (4, 6, 3)}

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3, eps=1e-3)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(72, 5)

    def forward(self, x):
        return self.fc(self.flatten(self.bn(self.conv(x))))


def keras_arrays_of(model: NonSquare):
    """What Keras' get_weights() would hold for this model, built by hand in numpy (NHWC)."""
    conv_k = model.conv.weight.detach().numpy().transpose(2, 3, 1, 0)  # OIHW -> HWIO
    fc_k = model.fc.weight.detach().numpy().reshape(5, 3, 4, 6).transpose(2, 3, 1, 0).reshape(72, 5)
    bn = model.bn
    return [conv_k, model.conv.bias.detach().numpy(), bn.weight.detach().numpy(), bn.bias.detach().numpy(),
            bn.running_mean.numpy(), bn.running_var.numpy(), fc_k, model.fc.bias.detach().numpy()]


def test_declared_flatten_shape_round_trips_and_matches_an_nhwc_forward():
    torch.manual_seed(0)
    source = NonSquare().eval()
    with torch.no_grad():
        source.bn.running_mean.uniform_(-1, 1)
        source.bn.running_var.uniform_(0.5, 2)
    arrays = keras_arrays_of(source)
    target = load_keras_weights(NonSquare(), arrays).eval()
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
    # the Keras computation in NHWC with the Keras arrays gives the port's output
    x = torch.randn(4, 2, 4, 6)
    with torch.no_grad():
        h = torch.nn.functional.conv2d(x, torch.from_numpy(arrays[0]).permute(3, 2, 0, 1), torch.from_numpy(arrays[1]),
                                       padding=1)
        h = (h - source.bn.running_mean[:, None, None]) / torch.sqrt(source.bn.running_var[:, None, None] + 1e-3)
        h = h * source.bn.weight[:, None, None] + source.bn.bias[:, None, None]
        keras = h.permute(0, 2, 3, 1).reshape(4, 72) @ torch.from_numpy(arrays[6]) + torch.from_numpy(arrays[7])
        assert torch.allclose(target(x), keras, atol=1e-5)


def test_undeclared_non_square_flatten_asks_for_the_shape():
    class Undeclared(NonSquare):
        keras_flatten = {}

    assert_refused(Undeclared(), keras_arrays_of(NonSquare()), "fc", "not a square map", "keras_flatten")


def test_unsupported_layer_is_refused():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    with pytest.raises(KerasWeightsError, match=r"layer 1 \(LayerNorm\) has weights but no known Keras layout"):
        load_keras_weights(model, [np.zeros((4, 4), np.float32), np.zeros(4, np.float32)])


# -- HDF5: Keras 3 .weights.h5, .keras archives, Keras 2 .h5 (h5py is optional) ------------

KERAS3_LAYERS = [  # fixture A as a Keras 3 Sequential: snake-cased class + per-class counter
    ("conv2d", 0, 2), ("batch_normalization", 2, 4), ("conv2d_1", 6, 2), ("batch_normalization_1", 8, 4),
    ("dense", 12, 2), ("batch_normalization_2", 14, 4), ("dense_1", 18, 2)]


def write_keras3_h5(file, skip=()):
    """The layout keras/src/saving/saving_lib.py writes for save_weights("x.weights.h5")."""
    h5py = pytest.importorskip("h5py", reason="h5py is optional (pip install -e .[keras])")
    w = np.load(fixture("weights_A.npz"))
    with h5py.File(file, "w") as f:
        f.create_group("vars")  # the model's own (none)
        for empty in ("max_pooling2d", "dropout", "flatten", "dropout_1"):
            f.create_group(f"layers/{empty}/vars")
        for name, first, count in reversed(KERAS3_LAYERS):  # creation order must not matter
            if name in skip:
                continue
            group = f.create_group(f"layers/{name}/vars")
            for i in range(count):
                group[str(i)] = w[f"w{first + i}"]
        f.create_group("optimizer/vars")["0"] = np.array(100, dtype=np.int64)  # iterations: not a weight


def test_keras3_weights_h5_loads_like_the_npz(tmp_path):
    path = tmp_path / "model.weights.h5"
    write_keras3_h5(path)
    from_h5 = load_keras_weights(models.build("cnn"), path).eval()
    assert all(torch.equal(a, b) for a, b in zip(from_h5.state_dict().values(), loaded("cnn").state_dict().values()))


def test_keras_archive_loads_like_the_npz(tmp_path):
    h5 = io.BytesIO()
    write_keras3_h5(h5)
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.json", "{}")
        zf.writestr("config.json", "{}")
        zf.writestr("model.weights.h5", h5.getvalue())
    from_archive = load_keras_weights(models.build("cnn"), path)
    assert torch.equal(from_archive.fc1.weight, loaded("cnn").fc1.weight)


def test_keras3_h5_missing_layer_and_other_model(tmp_path):
    path = tmp_path / "partial.weights.h5"
    write_keras3_h5(path, skip=("dense_1",))
    assert_refused(models.build("cnn"), path, "no layers/dense_1 for fc2")
    path = tmp_path / "a.weights.h5"
    write_keras3_h5(path)
    assert_refused(models.build("dense-mlp"), path, "no layers/dense_2 for fc3", "the file has batch_normalization")


def test_keras2_h5_loads_like_the_npz(tmp_path):
    """Keras 2's save_weights("x.h5"): layer_names / weight_names attributes, 'layer/kernel:0' datasets."""
    h5py = pytest.importorskip("h5py", reason="h5py is optional (pip install -e .[keras])")
    w = np.load(fixture("weights_A.npz"))
    names = [str(n) for n in w["names"]]
    layer_names = ["conv1", "bn1", "conv2", "bn2", "pool", "drop1", "flatten", "fc1", "bn3", "drop2", "fc2"]
    path = tmp_path / "keras2.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in layer_names]
        for layer in sorted(layer_names):  # Keras 2 creates the groups sorted by name
            g = f.create_group(layer)
            mine = [(f"{n}:0", w[f"w{i}"]) for i, n in enumerate(names) if n.startswith(layer + "/")]
            g.attrs["weight_names"] = [n.encode() for n, _ in mine]
            for n, a in mine:
                g.create_dataset(n, data=a)
    from_h5 = load_keras_weights(models.build("cnn"), path)
    assert all(torch.equal(a, b) for a, b in zip(from_h5.state_dict().values(), loaded("cnn").state_dict().values()))


def test_truncated_h5_is_one_line(tmp_path):
    path = tmp_path / "model.weights.h5"
    write_keras3_h5(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    assert_refused(models.build("cnn"), path, "model.weights.h5", "truncated or corrupt HDF5")


def test_h5_without_h5py_says_how_to_install(tmp_path, monkeypatch):
    path = tmp_path / "model.weights.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    monkeypatch.setattr("models.keras_weights._import_h5py", lambda: None)
    assert_refused(models.build("cnn"), path, "needs h5py", "pip install")


# -- the command line -----------------------------------------------------------------------

def one_line_error(proc, *needles):
    assert proc.returncode == 1, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert all(n in lines[0] for n in needles), lines[0]


def test_cli_starts_from_keras_weights(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("--model", "cnn", "--init-from-keras", str(fixture("weights_A.npz")), "--dry-run", "--epochs", "1",
                   "--batch-size", "32", "--test-size", "500", "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    summary = read_summary(run_dir)
    # Keras' trained weights: ~99% after two more steps; two steps from a fresh init are far from it
    assert summary["test_accuracy"] > 0.95, summary["test_accuracy"]


@pytest.mark.parametrize("model_name, weights, needles", [
    ("dense-mlp", "weights_A.npz", ("weights_A.npz", "DenseMLP", "fc1.weight")),
    ("cnn", "weights_C.npz", ("weights_C.npz", "KerasCNN", "conv1.weight")),
])
def test_cli_wrong_weights_is_one_line_exit_1(model_name, weights, needles, tmp_path):
    proc = run_cli("--model", model_name, "--init-from-keras", str(fixture(weights)), "--dry-run",
                   "--run-dir", str(tmp_path / "r"))
    one_line_error(proc, "train.py: error:", *needles)
