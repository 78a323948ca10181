"""MNIST reading: both layouts, gzipped or not, and one-line errors naming the bad file."""
import gzip
import shutil
from pathlib import Path

import pytest

from experiments.mnist import FILES, DataError, load_mnist


def copy_mnist(src: Path, dst: Path, gz: bool = True) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        if gz:
            shutil.copy(src / f"{name}.gz", dst / f"{name}.gz")
        else:
            (dst / name).write_bytes(gzip.decompress((src / f"{name}.gz").read_bytes()))
    return dst


def test_reads_real_mnist(mnist):
    assert tuple(mnist["train"].images.shape) == (60000, 28, 28)
    assert tuple(mnist["test"].images.shape) == (10000, 28, 28)
    assert mnist["train"].labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert mnist["test"].labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert int((mnist["train"].images == 0).all(0).sum()) == 67  # the known always-zero pixels


def test_torchvision_layout_and_uncompressed(mnist_path, tmp_path):
    copy_mnist(mnist_path, tmp_path / "MNIST" / "raw", gz=False)
    data = load_mnist(str(tmp_path), allow_download=False)
    assert data["test"].labels[:3].tolist() == [7, 2, 1]


def one_line(exc: Exception) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


def test_missing_files_say_where_to_put_which(tmp_path):
    with pytest.raises(DataError) as err:
        load_mnist(str(tmp_path), allow_download=False)
    text = one_line(err.value)
    assert "train-images-idx3-ubyte.gz" in text and str(tmp_path) in text


def test_truncated_gzip_is_named(mnist_path, tmp_path):
    copy_mnist(mnist_path, tmp_path)
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:1000])
    with pytest.raises(DataError) as err:
        load_mnist(str(tmp_path), allow_download=False)
    assert "t10k-labels-idx1-ubyte.gz" in one_line(err.value) and "md5" in str(err.value)


def test_corrupt_uncompressed_file_is_named(mnist_path, tmp_path):
    copy_mnist(mnist_path, tmp_path, gz=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x03" + bad.read_bytes()[4:-100])  # right header, data cut short
    with pytest.raises(DataError) as err:
        load_mnist(str(tmp_path), allow_download=False)
    assert "train-images-idx3-ubyte" in one_line(err.value) and "truncated" in str(err.value)


def test_wrong_shape_is_named(mnist_path, tmp_path):
    copy_mnist(mnist_path, tmp_path, gz=False)
    bad = tmp_path / "t10k-images-idx3-ubyte"
    raw = bytearray(bad.read_bytes())
    raw[8:12] = (14).to_bytes(4, "big")  # claims 14 rows
    bad.write_bytes(bytes(raw))
    with pytest.raises(DataError) as err:
        load_mnist(str(tmp_path), allow_download=False)
    assert "t10k-images-idx3-ubyte" in one_line(err.value) and "shape" in str(err.value)


def test_garbage_is_not_an_idx_file(mnist_path, tmp_path):
    copy_mnist(mnist_path, tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(b"hello world, not MNIST")
    with pytest.raises(DataError) as err:
        load_mnist(str(tmp_path), allow_download=False)
    assert "t10k-labels-idx1-ubyte" in one_line(err.value)
