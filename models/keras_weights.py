"""Load weights saved by Keras into the PyTorch ports, converting layouts.

``load_keras_weights(model, source)`` takes what Keras saved and copies it into ``model``:

* an ``.npz`` of ``model.get_weights()``: keys ``w0 … wN`` in that order, optionally with
  ``names``, ``shapes`` and ``bn_epsilon`` metadata (as in ``shared/fixtures/keras``);
* a list of numpy arrays in ``model.get_weights()`` order;
* with ``h5py`` installed (``pip install -e .[keras]``):
  - Keras 3's ``model.save_weights("x.weights.h5")``: ``layers/<layer>/vars/<i>`` where
    ``<layer>`` is the snake-cased class name plus a per-class counter (``conv2d``,
    ``conv2d_1``, ``batch_normalization``, ``dense_2`` …), as ``keras/src/saving/saving_lib.py``
    writes it; also the same file inside a ``.keras`` archive (``model.weights.h5``);
  - Keras 2 / tf.keras HDF5 (``save_weights("x.h5")`` or ``model.save("x.h5")``): the
    ``layer_names`` and ``weight_names`` attributes give ``get_weights()`` order.
  Only top-level Conv2D, Dense and BatchNormalization layers of a Sequential or functional
  model are read (nested models and sharded files are not).

Torch layers are matched to Keras layers in registration order (``model.named_modules()``),
which for the ports is the order of the forward pass and of the Keras model. Per layer:

* ``nn.Conv2d``: Keras kernel ``(kh, kw, in, out)`` (HWIO) -> ``(out, in, kh, kw)``; bias.
* ``nn.Linear``: Keras kernel ``(in, out)`` -> ``(out, in)``; bias. A Linear fed by an
  ``nn.Flatten`` of a conv output gets its input rows permuted from Keras' NHWC flatten order
  ``(h, w, c)`` to torch's NCHW ``(c, h, w)``. The shape is detected (channels of the last
  conv, square map); a model can state it instead with a class attribute
  ``keras_flatten = {"fc1": (h, w, c)}`` (or ``None`` where the model flattens NHWC itself).
* BatchNorm: gamma, beta, moving_mean, moving_variance -> weight, bias, running_mean,
  running_var.

Everything is converted and checked before anything is assigned: a wrong file raises a
:class:`KerasWeightsError` whose message is one line naming the layer, and the model is
left untouched.
"""
from __future__ import annotations

import io
import math
import os
import re
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

Source = Union[str, os.PathLike, Sequence[np.ndarray], Mapping[str, np.ndarray]]

ZIP_MAGIC = b"PK\x03\x04"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
KERAS_ARCHIVE_WEIGHTS = "model.weights.h5"  # inside a Keras 3 .keras zip
ROLES = {"kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance"}


class KerasWeightsError(ValueError):
    """Keras weights that cannot go into this model, explained in one line."""


@dataclass
class _Slot:
    """One torch tensor and the Keras array that fills it."""

    layer: str  # torch module name, e.g. "fc1"
    attr: str  # "weight", "bias", "running_mean", ...
    role: str  # Keras' name for it: "kernel", "gamma", "moving_variance", ...
    target: torch.Tensor
    keras_shape: Tuple[int, ...]
    to_torch: Callable[[np.ndarray], np.ndarray]


@dataclass
class _Layer:
    name: str  # torch module name
    keras_class: str  # snake-cased Keras class: "conv2d", "dense", "batch_normalization"
    module: nn.Module
    slots: List[_Slot]


@dataclass
class _Weights:
    """Arrays in ``get_weights()`` order, with a label per array for messages."""

    arrays: List[np.ndarray]
    labels: List[str]  # "w12 ('fc1/kernel')", "layers/dense/vars/0", ...
    roles: List[Optional[str]]  # "kernel" etc. where the file names it
    where: str = "the list"  # the file, for messages
    bn_epsilon: Optional[float] = None


def load_keras_weights(model: nn.Module, source: Source) -> nn.Module:
    """Copy Keras weights into ``model`` (a port), converting layouts; returns ``model``.

    Args:
        model: the torch port, e.g. ``models.build("cnn")``.
        source: path to an ``.npz`` of ``get_weights()`` (keys ``w0 … wN``), a ``.weights.h5``,
            ``.keras`` or Keras 2 ``.h5`` file (needs h5py), or the list ``get_weights()`` returns.

    Raises:
        KerasWeightsError: unreadable file, or a count, shape or layout mismatch; nothing is
            assigned then.
    """
    layers = _plan(model)
    if isinstance(source, (str, os.PathLike)):
        weights = _read_file(Path(source), layers)
    elif isinstance(source, Mapping):
        weights = _from_mapping(source, "the mapping")
    elif isinstance(source, Sequence) and not isinstance(source, (bytes, np.ndarray)):
        weights = _from_arrays(list(source), "array")
    else:
        raise TypeError(f"source must be a file path or the list get_weights() returns, not {type(source).__name__}")
    values = _convert(layers, weights, type(model).__name__)
    with torch.no_grad():
        for slot, value in values:
            slot.target.copy_(value)
    return model


# -- the torch side ------------------------------------------------------------------------

def _plan(model: nn.Module) -> List[_Layer]:
    """The model's weighted layers in registration order, each with its Keras slots."""
    declared = getattr(model, "keras_flatten", {}) or {}
    layers: List[_Layer] = []
    channels: Optional[int] = None  # channels of the last conv output, while still spatial
    flattened = False
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            layers.append(_conv_layer(name, m))
            channels, flattened = m.out_channels, False
        elif isinstance(m, nn.Flatten):
            flattened = channels is not None
        elif isinstance(m, nn.Linear):
            if name in declared:
                nhwc = declared[name]
            else:
                nhwc = _detect_flatten(name, m, channels, flattened)
            layers.append(_linear_layer(name, m, nhwc))
            channels, flattened = None, False
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            layers.append(_batchnorm_layer(name, m))
        elif any(True for _ in m.parameters(recurse=False)):
            raise KerasWeightsError(f"layer {name} ({type(m).__name__}) has weights but no known Keras layout "
                                    "(supported: Conv2d, Linear, BatchNorm)")
    unknown = set(declared) - {layer.name for layer in layers if layer.keras_class == "dense"}
    if unknown:
        raise KerasWeightsError(f"{type(model).__name__}.keras_flatten names {sorted(unknown)}, which are not "
                                "Linear layers of the model")
    return layers


def _detect_flatten(name: str, m: nn.Linear, channels: Optional[int], flattened: bool):
    """(h, w, c) of the NHWC tensor Keras flattened before this Linear, or None if no permutation."""
    if channels is None or m.in_features == channels:  # not after a conv, or a 1x1 map: same order
        return None
    hint = f"set keras_flatten = {{{name!r}: (h, w, c)}} on the model"
    if not flattened:
        raise KerasWeightsError(f"{name}: Linear after a Conv2d without an nn.Flatten module between them; "
                                f"cannot tell how Keras flattened its input: {hint}")
    hw, rest = divmod(m.in_features, channels)
    side = math.isqrt(hw)
    if rest or side * side != hw:
        raise KerasWeightsError(f"{name}: {m.in_features} inputs is not a square map of {channels} channels; {hint}")
    return (side, side, channels)


def _conv_layer(name: str, m: nn.Conv2d) -> _Layer:
    out_c, in_c, kh, kw = m.weight.shape
    slots = [_Slot(name, "weight", "kernel", m.weight, (kh, kw, in_c, out_c),
                   lambda a: a.transpose(3, 2, 0, 1))]  # HWIO -> OIHW
    if m.bias is not None:
        slots.append(_Slot(name, "bias", "bias", m.bias, (out_c,), _same))
    return _Layer(name, "conv2d", m, slots)


def _linear_layer(name: str, m: nn.Linear, nhwc: Optional[Tuple[int, int, int]]) -> _Layer:
    out_f, in_f = m.weight.shape
    if nhwc is None:
        to_torch = _transpose
    else:
        h, w, c = nhwc
        if h * w * c != in_f:
            raise KerasWeightsError(f"{name}: keras_flatten shape {nhwc} has {h * w * c} elements, "
                                    f"the layer takes {in_f}")

        def to_torch(a: np.ndarray) -> np.ndarray:  # rows (h, w, c) -> columns (c, h, w)
            return a.reshape(h, w, c, out_f).transpose(3, 2, 0, 1).reshape(out_f, in_f)

    slots = [_Slot(name, "weight", "kernel", m.weight, (in_f, out_f), to_torch)]
    if m.bias is not None:
        slots.append(_Slot(name, "bias", "bias", m.bias, (out_f,), _same))
    return _Layer(name, "dense", m, slots)


def _batchnorm_layer(name: str, m: nn.modules.batchnorm._BatchNorm) -> _Layer:
    if not m.track_running_stats:
        raise KerasWeightsError(f"{name}: BatchNorm without running statistics has no Keras counterpart")
    n = (m.num_features,)
    slots = []
    if m.affine:  # Keras scale=True / center=True
        slots += [_Slot(name, "weight", "gamma", m.weight, n, _same), _Slot(name, "bias", "beta", m.bias, n, _same)]
    slots += [_Slot(name, "running_mean", "moving_mean", m.running_mean, n, _same),
              _Slot(name, "running_var", "moving_variance", m.running_var, n, _same)]
    return _Layer(name, "batch_normalization", m, slots)


def _same(a: np.ndarray) -> np.ndarray:
    return a


def _transpose(a: np.ndarray) -> np.ndarray:
    return a.T


# -- checking and converting ---------------------------------------------------------------

def _convert(layers: List[_Layer], weights: _Weights, what: str) -> List[Tuple[_Slot, torch.Tensor]]:
    """Every slot's torch value, or a KerasWeightsError naming the first layer that does not fit."""
    slots = [slot for layer in layers for slot in layer.slots]
    first_bad = next((i for i, (slot, a) in enumerate(zip(slots, weights.arrays))
                      if tuple(a.shape) != slot.keras_shape), None)
    if len(weights.arrays) != len(slots):
        per_layer = ", ".join(f"{layer.name} {len(layer.slots)}" for layer in layers)
        hint = f"; first mismatch: {_mismatch(slots[first_bad], weights, first_bad)}" if first_bad is not None else ""
        raise KerasWeightsError(f"{weights.where}: {len(weights.arrays)} Keras arrays for {what}, which takes "
                                f"{len(slots)} ({per_layer}){hint}")
    if first_bad is not None:
        raise KerasWeightsError(f"{weights.where}: {_mismatch(slots[first_bad], weights, first_bad)}")
    values = []
    for i, (slot, a) in enumerate(zip(slots, weights.arrays)):
        role = weights.roles[i]
        if role is not None and role != slot.role:
            raise KerasWeightsError(f"{weights.where}: {slot.layer}.{slot.attr} expects the Keras {slot.role}, "
                                    f"{weights.labels[i]} is a {role}")
        if a.dtype.kind != "f":
            raise KerasWeightsError(f"{weights.where}: {slot.layer}.{slot.attr} expects floating point, "
                                    f"{weights.labels[i]} has dtype {a.dtype}")
        value = torch.from_numpy(np.ascontiguousarray(slot.to_torch(a))).to(slot.target.dtype)
        values.append((slot, value))
    if weights.bn_epsilon is not None:
        for layer in layers:
            eps = getattr(layer.module, "eps", None)
            if layer.keras_class == "batch_normalization" and not math.isclose(eps, weights.bn_epsilon, rel_tol=1e-6):
                raise KerasWeightsError(f"{weights.where}: {layer.name} has BatchNorm eps {eps:g} but the Keras "
                                        f"model used epsilon {weights.bn_epsilon:g}")
    return values


def _mismatch(slot: _Slot, weights: _Weights, i: int) -> str:
    return (f"{slot.layer}.{slot.attr} expects a Keras {slot.role} of shape {slot.keras_shape}, "
            f"{weights.labels[i]} has shape {tuple(weights.arrays[i].shape)}")


# -- the Keras side: reading sources -------------------------------------------------------

def _read_file(path: Path, layers: List[_Layer]) -> _Weights:
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise KerasWeightsError(f"{path}: cannot read ({_one_line(exc)})") from None
    if head.startswith(HDF5_MAGIC):
        return _read_h5(path, path, layers)
    if head.startswith(ZIP_MAGIC):
        try:
            with zipfile.ZipFile(path) as zf:
                if KERAS_ARCHIVE_WEIGHTS in zf.namelist():  # a Keras 3 .keras archive
                    return _read_h5(io.BytesIO(zf.read(KERAS_ARCHIVE_WEIGHTS)), path, layers)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise KerasWeightsError(f"{path}: truncated or corrupt zip/.npz file ({_one_line(exc)})") from None
        return _read_npz(path)
    if not head:
        raise KerasWeightsError(f"{path}: empty file")
    raise KerasWeightsError(f"{path}: neither an .npz (zip) nor an HDF5 file (starts with {head!r})")


def _read_npz(path: Path) -> _Weights:
    try:
        with np.load(path, allow_pickle=False) as z:
            contents = {key: z[key] for key in z.files}  # read all now: lazy reads fail late
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
        raise KerasWeightsError(f"{path}: truncated or corrupt .npz file ({_one_line(exc)})") from None
    return _from_mapping(contents, str(path))


def _from_mapping(contents: Mapping[str, np.ndarray], where: str) -> _Weights:
    """``w0 … wN`` plus optional metadata (``names``, ``shapes``, ``bn_epsilon``)."""
    found = sorted(int(k[1:]) for k in contents if re.fullmatch(r"w\d+", k))
    names = [str(n) for n in contents["names"]] if "names" in contents else None
    count = len(names) if names is not None else (found[-1] + 1 if found else 0)
    missing = sorted(set(range(count)) - set(found))
    if not found:
        raise KerasWeightsError(f"{where}: no weight arrays (keys w0 … wN) in it")
    if missing:
        raise KerasWeightsError(f"{where}: missing {', '.join(f'w{i}' for i in missing[:5])}"
                                f"{' …' if len(missing) > 5 else ''} of w0 … w{count - 1}")
    if len(found) > count:
        raise KerasWeightsError(f"{where}: {len(found)} arrays w0 … w{found[-1]} but names lists {count}")
    arrays = [np.asarray(contents[f"w{i}"]) for i in range(count)]
    if "shapes" in contents:  # the file's own record of what it holds
        for i, (a, shape) in enumerate(zip(arrays, contents["shapes"])):
            if str(tuple(a.shape)) != str(shape):
                raise KerasWeightsError(f"{where}: w{i} has shape {tuple(a.shape)} but the file says {shape}")
    weights = _from_arrays(arrays, "w", names)
    weights.where = where
    if "bn_epsilon" in contents:
        weights.bn_epsilon = float(contents["bn_epsilon"])
    return weights


def _from_arrays(arrays: List, prefix: str, names: Optional[List[str]] = None) -> _Weights:
    arrays = [a if isinstance(a, np.ndarray) else np.asarray(a) for a in arrays]
    if names is None:
        labels = [f"{prefix}[{i}]" if prefix == "array" else f"{prefix}{i}" for i in range(len(arrays))]
        return _Weights(arrays, labels, [None] * len(arrays))
    labels = [f"w{i} ({n!r})" for i, n in enumerate(names)]
    return _Weights(arrays, labels, [_role(n) for n in names])


def _role(name: str) -> Optional[str]:
    """'bn1/moving_mean' or 'conv2d/kernel:0' -> the Keras role, where it is one we know."""
    role = name.rsplit("/", 1)[-1].split(":", 1)[0]
    return role if role in ROLES else None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _import_h5py():
    try:
        import h5py
    except ImportError:
        return None
    return h5py


def _read_h5(file, path: Path, layers: List[_Layer]) -> _Weights:
    h5py = _import_h5py()
    if h5py is None:
        raise KerasWeightsError(f"{path}: is an HDF5 Keras file; reading it needs h5py "
                                "(pip install h5py, or pip install -e .[keras])")
    try:
        with h5py.File(file, "r") as f:
            for top in ("layers", "_layer_checkpoint_dependencies"):  # Keras 3; tf.keras 2.13-2.15 .keras
                if top in f and isinstance(f[top], h5py.Group):
                    return _read_keras3_h5(f[top], path, layers)
            root = f["model_weights"] if "model_weights" in f else f  # model.save("x.h5") vs save_weights
            if _h5_attr_list(root, "layer_names") is not None:
                return _read_keras2_h5(root, path)
    except KerasWeightsError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise KerasWeightsError(f"{path}: truncated or corrupt HDF5 file ({_one_line(exc)})") from None
    raise KerasWeightsError(f"{path}: HDF5 file without Keras weights (no 'layers' group, no 'layer_names')")


def _read_keras3_h5(group, path: Path, layers: List[_Layer]) -> _Weights:
    """Keras 3 ``.weights.h5``: ``layers/<class>[_n]/vars/<i>``; h5py lists groups by name, not
    creation order, so the n-th torch layer of a class reads the group ``<class>_<n>``."""
    counters: Dict[str, int] = {}
    arrays, labels, used = [], [], set()
    for layer in layers:
        n = counters.get(layer.keras_class, 0)
        counters[layer.keras_class] = n + 1
        key = layer.keras_class if n == 0 else f"{layer.keras_class}_{n}"
        if key not in group or "vars" not in group[key]:
            raise KerasWeightsError(f"{path}: no layers/{key} for {layer.name} (the file has "
                                    f"{', '.join(_h5_weighted_layers(group)) or 'no weighted layers'})")
        stored = group[key]["vars"]
        if sorted(stored.keys()) != sorted(str(i) for i in range(len(stored))):
            raise KerasWeightsError(f"{path}: layers/{key}/vars holds {sorted(stored.keys())}, not 0 … n-1")
        if len(stored) != len(layer.slots):
            raise KerasWeightsError(f"{path}: {layer.name} takes layers/{key}, which holds {len(stored)} arrays, "
                                    f"not {len(layer.slots)} ({', '.join(s.role for s in layer.slots)})")
        for i in range(len(stored)):
            arrays.append(np.asarray(stored[str(i)]))
            labels.append(f"layers/{key}/vars/{i}")
        used.add(key)
    extra = [k for k in _h5_weighted_layers(group) if k not in used]
    if extra:
        raise KerasWeightsError(f"{path}: weights for {', '.join(f'layers/{k}' for k in extra)} "
                                f"have no layer in the model")
    return _Weights(arrays, labels, [None] * len(arrays), str(path))


def _h5_weighted_layers(group) -> List[str]:
    return [k for k in group.keys() if "vars" in group[k] and len(group[k]["vars"])]


def _read_keras2_h5(root, path: Path) -> _Weights:
    """Keras 2 / tf.keras HDF5: ``layer_names`` in model order, each with ``weight_names``."""
    arrays, names = [], []
    for layer_name in _h5_attr_list(root, "layer_names"):
        weight_names = _h5_attr_list(root[layer_name], "weight_names") or []
        for weight_name in weight_names:
            arrays.append(np.asarray(root[layer_name][weight_name]))
            names.append(weight_name)
    weights = _from_arrays(arrays, "w", names)
    weights.labels, weights.where = [repr(n) for n in names], str(path)
    return weights


def _h5_attr_list(group, name: str) -> Optional[List[str]]:
    """A list attribute as Keras 2 writes it: whole, or in chunks ``name0``, ``name1`` …"""
    if name in group.attrs:
        values = list(group.attrs[name])
    elif f"{name}0" in group.attrs:
        values, chunk = [], 0
        while f"{name}{chunk}" in group.attrs:
            values += list(group.attrs[f"{name}{chunk}"])
            chunk += 1
    else:
        return None
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]
