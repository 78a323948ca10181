"""MNIST from the four standard IDX files, kept in memory as uint8 tensors.

Looked up in ``<root>/MNIST/raw/`` (torchvision's layout) or flat in ``<root>``, gzipped or
not. Anything wrong with a file is a :class:`DataError` whose message is one line naming
the file, never a traceback and never a silently wrong dataset.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import torch

# The same mirrors and checksums torchvision uses.
MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
FILES: Dict[str, str] = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
SPLITS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 60000),
          "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 10000)}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049


class DataError(Exception):
    """A dataset problem explained in one line."""


@dataclass
class Split:
    images: torch.Tensor  # (N, 28, 28) uint8
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


def default_root(data_dir: Optional[str] = None) -> Path:
    """``--data-dir``, else ``$MNIST_DIR``, else ``./data``."""
    return Path(data_dir or os.environ.get("MNIST_DIR") or "data")


def _find(root: Path, name: str) -> Optional[Path]:
    for folder in (root / "MNIST" / "raw", root):
        for candidate in (folder / f"{name}.gz", folder / name):
            if candidate.is_file():
                return candidate
    return None


def _missing_message(root: Path, missing: list) -> str:
    names = ", ".join(f"{n}.gz" for n in missing)
    return (f"MNIST not found and could not be downloaded: put {names} (from any MNIST mirror) in "
            f"{root}/ or {root}/MNIST/raw/, or point --data-dir or MNIST_DIR at a folder that has them")


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if path.suffix == ".gz":
        digest = hashlib.md5(raw).hexdigest()
        expected = FILES[path.name[:-3]]
        if digest != expected:
            raise DataError(f"{path}: md5 {digest} is not MNIST's {expected} (corrupt, truncated or another dataset)")
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: not a valid gzip file ({exc})") from None
    return raw


def _parse_idx(path: Path, raw: bytes, magic: int, count: int) -> torch.Tensor:
    ndim = 3 if magic == IMAGE_MAGIC else 1
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated ({len(raw)} bytes, shorter than an IDX header)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        kind = "image" if magic == IMAGE_MAGIC else "label"
        raise DataError(f"{path}: not an IDX {kind} file (magic number {found}, expected {magic})")
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    expected_dims = [count, 28, 28][:ndim]
    if dims != expected_dims:
        raise DataError(f"{path}: shape {tuple(dims)}, expected {tuple(expected_dims)}")
    size = 1
    for d in dims:
        size *= d
    if len(raw) - header != size:
        raise DataError(f"{path}: {len(raw) - header} data bytes, expected {size} (truncated or padded)")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(dims)


def download(root: Path, timeout: float = 20.0) -> None:
    """Fetch the missing files into ``root/MNIST/raw`` with md5 verification.

    Uses torchvision's MNIST class where torchvision imports; otherwise the same mirrors
    and checksums with urllib. Raises DataError with the offline hint when it cannot.
    """
    missing = [n for n in FILES if _find(root, n) is None]
    try:
        from torchvision.datasets import MNIST  # noqa: F401  (optional)
    except Exception:  # torchvision absent or its compiled ops do not load
        MNIST = None
    if MNIST is not None:
        try:
            MNIST(str(root), train=True, download=True)
            MNIST(str(root), train=False, download=True)
            return
        except Exception:
            raise DataError(_missing_message(root, missing)) from None
    target = root / "MNIST" / "raw"
    for name in missing:
        for mirror in MIRRORS:
            try:
                with urllib.request.urlopen(mirror + name + ".gz", timeout=timeout) as response:
                    data = response.read()
            except (urllib.error.URLError, OSError, ValueError):
                continue
            if hashlib.md5(data).hexdigest() == FILES[name]:
                target.mkdir(parents=True, exist_ok=True)
                tmp = target / f".{name}.gz.part"
                tmp.write_bytes(data)
                tmp.replace(target / f"{name}.gz")
                break
        else:
            raise DataError(_missing_message(root, missing))


def load_split(root: Path, split: str) -> Split:
    image_name, label_name, count = SPLITS[split]
    paths = {n: _find(root, n) for n in (image_name, label_name)}
    missing = [n for n, p in paths.items() if p is None]
    if missing:
        raise DataError(_missing_message(root, missing))
    images = _parse_idx(paths[image_name], _read_bytes(paths[image_name]), IMAGE_MAGIC, count)
    labels = _parse_idx(paths[label_name], _read_bytes(paths[label_name]), LABEL_MAGIC, count)
    if int(labels.max()) > 9:
        raise DataError(f"{paths[label_name]}: label {int(labels.max())} outside 0-9")
    return Split(images, labels.long())


def load_mnist(data_dir: Optional[str] = None, allow_download: bool = True) -> Dict[str, Split]:
    """Both splits, downloading first if any file is missing and the network allows."""
    root = default_root(data_dir)
    if allow_download and any(_find(root, n) is None for n in FILES):
        download(root)
    return {split: load_split(root, split) for split in SPLITS}
