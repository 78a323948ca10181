"""What might speed up a bare cnn training step: thread count, channels_last, torch.compile."""
from __future__ import annotations

import itertools
from statistics import median
from typing import Dict

import torch

from probes.pair_scan import inference_mode_of

from ..sizes import Sizes
from ..timing import interleaved, spread
from ..workload import fresh_cnn, train_step
from .torch_compile import try_compile


def configurations(xs, device: torch.device, sizes: Sizes, log) -> Dict:
    """Try each on batches ``xs``; keep the fastest thread count for the rest of the run."""
    out: Dict = {}
    default_threads = torch.get_num_threads()
    if device.type == "cpu" and default_threads > 1:
        out.update(_threads(xs, device, sizes, default_threads, log))
    else:
        out["threads_chosen"] = default_threads
    out["channels_last"] = _channels_last(xs, device, sizes, log)
    if sizes.compile:
        out["compile"] = try_compile(xs, device, sizes, log)
    return out


def _threads(xs, device: torch.device, sizes: Sizes, default_threads: int, log) -> Dict:
    """torch's default thread count against one thread; sets the faster (the rest of the run uses it)."""
    model, opt = fresh_cnn(device)
    cyc = itertools.cycle(xs)

    def with_threads(n):
        def run():
            torch.set_num_threads(n)
            train_step(model, opt, *next(cyc))
        return run

    fns = {f"threads={default_threads}": with_threads(default_threads), "threads=1": with_threads(1)}
    times = interleaved(fns, sizes.config_rounds, device, warmup=1)
    best = min(times, key=lambda k: median(times[k]))
    torch.set_num_threads(int(best.split("=")[1]))
    log(f"threads: {', '.join(f'{k} {median(v):.3f}s' for k, v in times.items())} -> {best}")
    return {"threads": {k: spread(v) for k, v in times.items()}, "threads_chosen": torch.get_num_threads()}


def _channels_last(xs, device: torch.device, sizes: Sizes, log) -> Dict:
    """Same weights, same batches in either layout (the port's default is channels_last); the outputs
    must agree."""
    (m1, o1), (m2, o2) = fresh_cnn(device, channels_last=False), fresh_cnn(device, channels_last=True)
    xl = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in xs]
    with torch.no_grad(), inference_mode_of(m1), inference_mode_of(m2):
        agree = torch.allclose(m1(xs[0][0]), m2(xl[0][0]), rtol=1e-4, atol=1e-5)
    c1, c2 = itertools.cycle(xs), itertools.cycle(xl)
    fns = {"contiguous": lambda: train_step(m1, o1, *next(c1)), "channels_last": lambda: train_step(m2, o2, *next(c2))}
    times = interleaved(fns, sizes.config_rounds, device, warmup=1)
    out = {**{k: spread(v) for k, v in times.items()}, "outputs_agree": bool(agree),
           "speedup": round(median(times["contiguous"]) / median(times["channels_last"]), 3)}
    log(f"channels_last: {out['speedup']}x the contiguous step, outputs agree: {agree}")
    return out
