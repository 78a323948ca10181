"""torch.compile of the cnn, bare and with train.py's probes attached (only in the full run:
a first compile takes ~25 s on 2 cores)."""
from __future__ import annotations

import itertools
import tempfile
import time
from statistics import median
from typing import Dict

import torch

from probes.pair_scan import inference_mode_of

from ..sizes import Sizes
from ..timing import interleaved, spread
from ..workload import fresh_cnn, probed, train_step


def _error(exc: Exception) -> Dict:
    return {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}


def try_compile(xs, device: torch.device, sizes: Sizes, log) -> Dict:
    """torch.compile of the bare model; and of a model with train.py's probes attached before
    compiling, the compiled module running the steps between logs (logging steps eagerly)."""
    (m1, o1), (m2, o2) = fresh_cnn(device), fresh_cnn(device)
    try:
        compiled = torch.compile(m2)
        start = time.perf_counter()
        with torch.no_grad(), inference_mode_of(m1), inference_mode_of(m2):
            agree = torch.allclose(m1(xs[0][0]), compiled(xs[0][0]), rtol=1e-4, atol=1e-5)
        train_step(compiled, o2, *xs[0])
        compile_s = time.perf_counter() - start
    except Exception as exc:  # no compiler, unsupported platform...
        log(f"torch.compile failed: {type(exc).__name__}: {exc}")
        return {"works": False, **_error(exc)}
    c1, c2 = itertools.cycle(xs), itertools.cycle(xs)
    eager = lambda: train_step(m1, o1, *next(c1))  # noqa: E731
    eager()
    times = interleaved({"eager": eager, "compiled": lambda: train_step(compiled, o2, *next(c2))},
                        sizes.config_rounds, device)
    out = {"works": True, "outputs_agree": bool(agree), "compile_seconds": round(compile_s, 1),
           **{k: spread(v) for k, v in times.items()},
           "speedup": round(median(times["eager"]) / median(times["compiled"]), 3),
           "with_probes_between_logs": _with_probes(xs, device, sizes, eager)}
    log(f"torch.compile: {out['speedup']}x the eager step after {compile_s:.0f}s of compiling; "
        f"with probes between logs {out['with_probes_between_logs']}")
    return out


def _with_probes(xs, device: torch.device, sizes: Sizes, eager) -> Dict:
    """With train.py's probes attached first (as train.py would have to: hooks added after
    compiling are not guaranteed to run in the compiled graph): logging steps run the eager
    module, the steps between logs the compiled one, which traces the per-step hooks."""
    from torch._dynamo.utils import counters

    with tempfile.TemporaryDirectory() as tmp:
        model, opt = fresh_cnn(device)
        monitor = probed(model, tmp, 10**9)
        train_step(model, opt, *xs[0], monitor=monitor)  # step 0 logs, eagerly
        # as in a fresh process (train.py): Dynamo does not guard on hooks by default
        # (skip_nnmodule_hook_guards), so the bare model's cached graph would be reused and
        # silently run without them
        torch._dynamo.reset()
        graphs = counters["stats"]["unique_graphs"]
        compiled = torch.compile(model)
        cyc = itertools.cycle(xs)
        start = time.perf_counter()
        try:
            for _ in range(3):
                train_step(compiled, opt, *next(cyc), monitor=monitor)
            fns = {"eager": eager, "compiled": lambda: train_step(compiled, opt, *next(cyc), monitor=monitor)}
            dead_units = monitor["dead_units"]
            seen = sum(dead_units.examples.values())
            times = interleaved(fns, sizes.config_rounds, device)
            counted = sum(dead_units.examples.values()) - seen
            out = {
                "speedup": round(median(times["eager"]) / median(times["compiled"]), 3),
                "recompiled_graphs": counters["stats"]["unique_graphs"] - graphs,
                "warmup_seconds": round(time.perf_counter() - start, 1),
                # did the compiled steps run the dead-units hooks? (every ReLU x batch per step)
                "hooks_ran": counted == len(dead_units.seen_nonzero) * len(xs[0][0]) * len(times["compiled"]),
            }
        except Exception as exc:
            out = _error(exc)
        monitor.__exit__()
    return out
