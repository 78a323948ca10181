"""Training throughput: train.py's own epoch loop against a minimal loop, and the GFLOP/s it
reaches against a large matmul's."""
from __future__ import annotations

import contextlib
import io
from statistics import median
from typing import Dict

import torch
from torch.utils.flop_counter import FlopCounterMode

from experiments.batches import to_float
from experiments.mnist import Split
from experiments.run import Run
from experiments.tasks import TASKS
from probes import MemorySink
from train import train_epoch  # train.py's loop itself, not a copy

from ..sizes import Sizes
from ..timing import interleaved, spread, timed
from ..workload import DEFAULT_EVERY, LOSS, fresh_cnn, probed, train_step


def throughput(split: Split, batch, device: torch.device, sizes: Sizes, tmp: str, log) -> Dict:
    """train.py's own epoch loop (its batching, to_float, probes at the default interval,
    TensorBoard) against a minimal loop over the same tensors, in interleaved windows;
    ``batch`` (x, y) is the one whose FLOPs are counted."""
    model_t, opt_t = fresh_cnn(device)
    monitor = probed(model_t, f"{tmp}/train", DEFAULT_EVERY)
    gen_t = torch.Generator().manual_seed(0)
    model_b, opt_b = fresh_cnn(device)
    images = to_float(split.images).to(device)  # converted once: the bare loop only indexes
    labels = split.labels.to(device)
    gen_b = torch.Generator().manual_seed(0)
    order = {"perm": torch.randperm(len(split), generator=gen_b), "at": 0}
    run = Run("", model_t, opt_t, monitor, monitor.sink, MemorySink())

    def train_py():
        with contextlib.redirect_stderr(io.StringIO()):  # its progress bar
            train_epoch([run], TASKS["classify"], LOSS, split, sizes.batch, gen_t, device, sizes.train_window, "bench")

    def bare():
        for _ in range(sizes.train_window):
            if order["at"] + sizes.batch > len(split):
                order["perm"], order["at"] = torch.randperm(len(split), generator=gen_b), 0
            idx = order["perm"][order["at"]:order["at"] + sizes.batch].to(device)
            order["at"] += sizes.batch
            train_step(model_b, opt_b, images[idx], labels[idx])

    fns = {"train_py": train_py, "bare_loop": bare}
    for fn in fns.values():
        fn()
    first = monitor.global_step
    times = interleaved(fns, sizes.train_repeats, device)
    logged = sum(1 for step in range(first, monitor.global_step) if monitor.schedule(step))
    monitor.__exit__()
    images_per_window = sizes.train_window * sizes.batch
    ips = {k: [images_per_window / t for t in v] for k, v in times.items()}
    ratios = [t / b for t, b in zip(ips["train_py"], ips["bare_loop"])]

    flops_per_image = _flops_per_image(batch, device)
    train_gflops = [flops_per_image * v / 1e9 for v in ips["train_py"]]
    n = 2048
    mm_gflops = _matmul_gflops(n, device, max(3, sizes.repeats))
    fractions = [g / median(mm_gflops) for g in train_gflops]
    out = {
        "train_vs_bare_loop": spread(ratios),
        "images_per_second": {k: spread(v, 1) for k, v in ips.items()},
        "train_gflops_fraction_of_matmul": spread(fractions),
        "train_gflops": spread(train_gflops, 2),
        "matmul_gflops": spread(mm_gflops, 2),
        "flops_per_image_fwd_bwd": int(flops_per_image),
        "logging_steps_measured": logged,
        "method": (f"{sizes.train_repeats} interleaved windows of {sizes.train_window} steps (batch {sizes.batch}): "
                   f"train.train_epoch with probes every {DEFAULT_EVERY} steps and a TensorBoard sink ({logged} of its "
                   f"{sizes.train_repeats * sizes.train_window} timed steps logged) vs a bare loop over pre-converted "
                   f"tensors; GFLOP/s = FlopCounterMode's conv/matmul FLOPs x images/s of train.py's loop, vs a "
                   f"{n}x{n} float32 matmul"),
    }
    log(f"throughput: train.py {out['train_vs_bare_loop']['median']}x the bare loop; "
        f"{out['train_gflops']['median']} GFLOP/s vs matmul {out['matmul_gflops']['median']} GFLOP/s")
    return out


def _flops_per_image(batch, device: torch.device) -> float:
    """Conv and matmul FLOPs of one training step of a fresh cnn on ``batch``, per image."""
    model, opt = fresh_cnn(device)
    x, y = batch
    with FlopCounterMode(display=False) as counter:
        train_step(model, opt, x, y)
    return counter.get_total_flops() / len(x)


def _matmul_gflops(n: int, device: torch.device, repeats: int):
    """GFLOP/s of an n x n float32 matmul, once per repeat: what this device can do at best."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    return [2 * n**3 / timed(lambda: torch.mm(a, b), device) / 1e9 for _ in range(repeats)]
