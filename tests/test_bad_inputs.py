"""Every bad input we could think of, through the CLI: one line on stderr, exit status 2
(usage) or 1 (runtime), no traceback, no run directory created, none that existed altered.

Each case runs ``train.main(argv)`` in this process (an uncaught exception fails the test
as a traceback would); the cases in ``REAL`` also run as a real ``python train.py``
subprocess. A subprocess costs a torch import, seconds on a busy machine, times 67.
"""
import gzip
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from conftest import run_cli
from experiments.mnist import FILES

M = ["--model", "cnn"]
RUN = ["--model", "dense-mlp", "--train-size", "64", "--test-size", "10", "--epochs", "1", "--batch-size", "16"]
TEST_IMAGES = "t10k-images-idx3-ubyte"


def idx_header(magic, *dims):
    return b"".join(int(v).to_bytes(4, "big") for v in (magic, *dims))


def run_args(*argv):
    return json.dumps(vars(train.parse_args(list(argv))))


@pytest.fixture(scope="module")
def base(tmp_path_factory, mnist_path):
    """Existing run directories and files the bad inputs point at (made once, checked after every case)."""
    root = tmp_path_factory.mktemp("bad")
    (root / "a_file").write_text("not a folder")
    (root / "existing").mkdir()
    (root / "existing" / "keep.txt").write_text("mine")
    (root / "empty").mkdir()
    for name, files in {
        "cnn_run": {"args.json": run_args("--model", "cnn"), "checkpoint.pt": "x"},
        "finished": {"args.json": run_args(*RUN), "checkpoint.pt": "x", "summary.json": "{}"},
        "no_checkpoint": {"args.json": run_args(*RUN)},
        "junk_checkpoint": {"args.json": run_args(*RUN), "checkpoint.pt": "junk"},
        "bad_args_json": {"args.json": "{not json", "checkpoint.pt": "x"},
        "other_json": {"args.json": "[1, 2]", "checkpoint.pt": "x"},
        "cuda_run": {"args.json": run_args(*RUN).replace('"device": "cpu"', '"device": "cuda"'), "checkpoint.pt": "x"},
    }.items():
        (root / name).mkdir()
        for file, text in files.items():
            (root / name / file).write_text(text)
    (root / "truncated_checkpoint").mkdir()
    (root / "truncated_checkpoint" / "args.json").write_text(run_args(*RUN))
    buf = io.BytesIO()
    torch.save({"format": 1, "weights": torch.zeros(1000)}, buf)
    (root / "truncated_checkpoint" / "checkpoint.pt").write_bytes(buf.getvalue()[:300])
    # MNIST folders with one bad file each; the other files are links to the real ones
    test_images = gzip.decompress((mnist_path / f"{TEST_IMAGES}.gz").read_bytes())
    bad_files = {
        "junk_gz": (f"{TEST_IMAGES}.gz", gzip.compress(b"junk")),
        "truncated_gz": (f"{TEST_IMAGES}.gz", (mnist_path / f"{TEST_IMAGES}.gz").read_bytes()[:5000]),
        "wrong_md5": (f"{TEST_IMAGES}.gz", gzip.compress(test_images[:-1] + b"\x01", compresslevel=1)),
        "not_gzip": (f"{TEST_IMAGES}.gz", b"plain text, not gzip"),
        "truncated_raw": (TEST_IMAGES, test_images[:100000]),
        "wrong_shape": (TEST_IMAGES, idx_header(2051, 10000, 32, 32) + bytes(10000 * 32 * 32)),
        "wrong_magic": (TEST_IMAGES, idx_header(2049, 10000) + bytes(10000)),
        "empty_file": (TEST_IMAGES, b""),
        "bad_labels": ("t10k-labels-idx1-ubyte", idx_header(2049, 10000) + bytes([10]) * 10000),
    }
    for name, (bad_name, content) in bad_files.items():
        folder = root / "data" / name
        folder.mkdir(parents=True)
        for good in FILES:
            if not bad_name.startswith(good):
                (folder / f"{good}.gz").symlink_to(mnist_path / f"{good}.gz")
        (folder / bad_name).write_bytes(content)
    (root / "data" / "missing").mkdir()
    np.savez(root / "wrong_keras.npz", w0=np.zeros((3, 3), np.float32))
    (root / "junk_keras.npz").write_bytes(b"PK\x03\x04 truncated zip")
    (root / "not_keras.h5").write_text("neither zip nor hdf5")
    return root


def snapshot(root):
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if not p.is_symlink()}


# (arguments, exit status, words the one line must contain: a string or a tuple of them); {base}
# is the fixture's folder
CASES = [
    # usage errors: argparse and the checks right after it (exit 2)
    ([], 2, "--model"),
    (["--model", "resnet"], 2, "invalid choice"),
    (["--model"], 2, "expected one argument"),
    (M + ["--epochs", "0"], 2, "--epochs"),
    (M + ["--epochs", "-2"], 2, "--epochs"),
    (M + ["--epochs", "two"], 2, "--epochs"),
    (M + ["--epochs", "1.5"], 2, "--epochs"),
    (M + ["--batch-size", "0"], 2, "--batch-size"),
    (M + ["--batch-size", "-3"], 2, "--batch-size"),
    (M + ["--batch-size", "lots"], 2, "--batch-size"),
    (M + ["--lr", "fast"], 2, "--lr"),
    (M + ["--lr", "0"], 2, "--lr"),
    (M + ["--lr", "-0.1"], 2, "--lr"),
    (M + ["--lr", "nan"], 2, "--lr"),
    (M + ["--lr", "inf"], 2, "--lr"),
    (M + ["--scan-images", "-1"], 2, "--scan-images"),
    (M + ["--scan-norm-images", "-5"], 2, "--scan-norm-images"),
    (M + ["--train-size", "0"], 2, "--train-size"),
    (M + ["--test-size", "-10"], 2, "--test-size"),
    (M + ["--log-every", "0"], 2, "--log-every"),
    (M + ["--seed", "abc"], 2, "--seed"),
    (M + ["--loss", "mse"], 2, "--loss"),
    (M + ["--optimizer", "lbfgs"], 2, "--optimizer"),
    (M + ["--no-such-flag"], 2, "unrecognized"),
    (M + ["--device", "toaster"], 2, "--device"),
    (M + ["--variant", "2"], 2, "--variant"),
    (["--model", "scaled-conv", "--variant", "4"], 2, "--variant"),
    (["--model", "deep-relu", "--compare"], 2, "scaled-conv only"),
    (["--model", "scaled-conv", "--compare", "--variant", "2"], 2, "--compare"),
    (["--model", "scaled-conv", "--compare", "--init-from-keras", "{base}/wrong_keras.npz"], 2, "--init-from-keras"),
    (["--resume", "{base}/cnn_run", "--epochs", "3"], 2, "--epochs"),
    (["--resume", "{base}/cnn_run", "--lr", "0.5", "--run-dir", "{base}/new"], 2, "--lr --run-dir"),
    (["--resume", "{base}/cnn_run", "--dry-run"], 2, "--dry-run"),
    # runtime errors: the data, the run directory, the files given (exit 1)
    (RUN + ["--batch-size", "65"], 1, "--batch-size 65"),
    (M + ["--train-size", "70000"], 1, "--train-size 70000"),
    (M + ["--run-dir", "{base}/a_file/run"], 1, "a_file/run"),
    (M + ["--run-dir", "/proc/no-runs-here"], 1, "/proc/no-runs-here"),
    (M + ["--run-dir", "{base}/existing"], 1, ("already exists", "{base}/existing")),
    (M + ["--run-dir", "{base}/a_file"], 1, ("already exists", "{base}/a_file")),
    (M + ["--data-dir", "{base}/data/missing"], 1, ("train-images-idx3-ubyte.gz", "{base}/data/missing")),
    (M + ["--data-dir", "{base}/a_file"], 1, "MNIST not found"),
    (M + ["--data-dir", "{base}/data/junk_gz"], 1, "md5"),
    (M + ["--data-dir", "{base}/data/truncated_gz"], 1, "md5"),
    (M + ["--data-dir", "{base}/data/wrong_md5"], 1, "md5"),
    (M + ["--data-dir", "{base}/data/not_gzip"], 1, "md5"),
    (M + ["--data-dir", "{base}/data/truncated_raw"], 1, "truncated"),
    (M + ["--data-dir", "{base}/data/wrong_shape"], 1, "shape (10000, 32, 32)"),
    (M + ["--data-dir", "{base}/data/wrong_magic"], 1, "magic number"),
    (M + ["--data-dir", "{base}/data/empty_file"], 1, "truncated"),
    (M + ["--data-dir", "{base}/data/bad_labels"], 1, "label 10"),
    (M + ["--init-from-keras", "{base}/no_such.npz"], 1, "no_such.npz"),
    (M + ["--init-from-keras", "{base}/wrong_keras.npz"], 1, "wrong_keras.npz"),
    (M + ["--init-from-keras", "{base}/junk_keras.npz"], 1, "junk_keras.npz"),
    (M + ["--init-from-keras", "{base}/not_keras.h5"], 1, "not_keras.h5"),
    (["--resume", "{base}/no_such_run"], 1, "no such run directory"),
    (["--resume", "{base}/a_file"], 1, "no such run directory"),
    (["--resume", "{base}/empty"], 1, "not a run directory"),
    (["--resume", "{base}/existing"], 1, "not a run directory"),
    (["--resume", "{base}/cnn_run", "--model", "dense-mlp"], 1, "--model cnn"),
    (["--resume", "{base}/finished"], 1, "finished"),
    (["--resume", "{base}/no_checkpoint"], 1, "no checkpoint.pt"),
    (["--resume", "{base}/bad_args_json"], 1, "args.json"),
    (["--resume", "{base}/other_json"], 1, "args.json"),
    (["--resume", "{base}/junk_checkpoint"], 1, "cannot read the checkpoint"),
    (["--resume", "{base}/truncated_checkpoint"], 1, "cannot read the checkpoint"),
]
if not torch.cuda.is_available():  # on a GPU machine these are not errors
    CASES += [(M + ["--device", "cuda"], 2, "no CUDA"), (["--resume", "{base}/cuda_run"], 1, "--device cpu")]


IDS = [" ".join(c[0]).replace("{base}/", "") or "no-args" for c in CASES]
# one or two of each kind, also as a real process
REAL = {"--model resnet", "--model cnn --lr 0", "--model cnn --run-dir a_file/run", "--model cnn --data-dir data/wrong_md5",
        "--model cnn --init-from-keras junk_keras.npz", "--resume cnn_run --model dense-mlp",
        "--resume cnn_run --epochs 3", "--resume junk_checkpoint"}
assert REAL <= set(IDS)


def in_process(argv, monkeypatch, capfd):
    """``python train.py ARGV`` as main() runs it: (exit status, stderr)."""
    capfd.readouterr()
    try:
        status = train.main(argv)
    except SystemExit as exc:  # argparse's usage errors
        status = exc.code
    return status, capfd.readouterr().err


@pytest.mark.parametrize("argv, status, needle", CASES + [c for c, i in zip(CASES, IDS) if i in REAL],
                         ids=IDS + [f"real: {i}" for i in IDS if i in REAL])
def test_bad_input_is_one_clear_line(argv, status, needle, base, mnist_path, monkeypatch, capfd, request):
    argv = [a.replace("{base}", str(base)) for a in argv]
    needles = [n.replace("{base}", str(base)) for n in ((needle,) if isinstance(needle, str) else needle)]
    new = base / "new"
    if "--run-dir" not in argv and "--resume" not in argv and argv:
        argv += ["--run-dir", str(new)]
    before = snapshot(base)
    if request.node.callspec.id.startswith("real: "):
        proc = run_cli(*argv, env_extra={"OMP_NUM_THREADS": "1"}, cwd=base)
        returncode, stderr = proc.returncode, proc.stderr
    else:
        monkeypatch.chdir(base)
        monkeypatch.setenv("MNIST_DIR", str(mnist_path))
        returncode, stderr = in_process(argv, monkeypatch, capfd)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert returncode == status, stderr
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("train.py: error: ") and all(n in lines[0] for n in needles), lines[0]
    assert snapshot(base) == before  # nothing made, nothing altered, nothing removed
    assert not new.exists() and not (base / "runs").exists()
