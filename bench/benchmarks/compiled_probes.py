"""torch.compile with train.py's probes: their cost on a compiled cnn at the default interval,
and whether the compiled, probed model is still faster than the eager bare one.

Written against the public API only, in both orders a user may take:

* ``attach_then_compile``: ``probes.watch(model, ...)``, then ``torch.compile(model)``;
* ``compile_then_attach``: ``torch.compile(model)``, two steps without probes (so that a graph
  without hooks is cached), then ``probes.watch(compiled, ...)``.

Each order trains its own cnn beside an eager bare cnn and a compiled bare cnn, interleaved.
The probed model logs every ``sizes.compile_log_period`` steps during the measurement, so
that one run times both kinds of step; the default interval's cost is composed from them:
``(99 x step between logs + logging step) / 100``. Graphs compiled and graph breaks during the
timed steps come from Dynamo's counters; whether the per-step hooks ran in the compiled steps
from the dead-units probe's example count (when it exposes one); warnings are recorded. A
failure to compile is a result (``error``), never a crash of the benchmark.
"""
from __future__ import annotations

import itertools
import time
import warnings
from statistics import median
from typing import Dict, List

import torch

from ..sizes import Sizes
from ..timing import at_thread_counts, timed, spread
from ..workload import DEFAULT_EVERY, fresh_cnn, probed, train_step

OVERHEAD = "compile_probe_overhead_default"
SPEEDUP = "compile_speedup_with_probes"
ORDERS = ("attach_then_compile", "compile_then_attach")


def _error(exc: BaseException) -> Dict:
    return {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"}


def _dynamo_counts() -> Dict[str, int]:
    from torch._dynamo.utils import counters
    return {"graphs": int(counters["stats"]["unique_graphs"]),
            "graph_breaks": int(sum(counters["graph_break"].values()))}


def _examples_seen(monitor) -> float:
    """Examples the dead-units probe has counted (None when it keeps no such count): it grows on
    every training step whose forward hooks ran."""
    probe = monitor.get("dead_units")
    examples = getattr(probe, "examples", None)
    if isinstance(examples, dict):
        return float(sum(float(v) for v in examples.values()))
    return None


def _layer_stats_steps(monitor) -> set:
    """Steps at which the monitor kept a layer-output gradient norm (``monitor.kept``, what the
    diagnosis reads): set only when the statistics probes' hooks ran in that step."""
    from probes import tags
    return {step for tag, values in monitor.kept.items() if tags.split(tag)[0] == tags.OUTPUT_GRAD_NORM
            for step, _ in values}


def _stance() -> str:
    """Dynamo's global stance ("default", "force_eager"...; torch keeps no public getter)."""
    from torch._dynamo import eval_frame
    return str(getattr(getattr(eval_frame, "_stance", None), "stance", "unknown"))


def _default_stance() -> str:
    """Put Dynamo's stance back to "default" if something left it otherwise (under "force_eager"
    nothing compiles: every figure here would be an eager one); returns the stance found."""
    found = _stance()
    if found not in ("default", "unknown"):
        torch.compiler.set_stance("default")
    return found


def _one_order(order: str, xs, device: torch.device, sizes: Sizes, tmp: str, log) -> Dict:
    """Eager bare, compiled bare and compiled probed cnns, interleaved; ratios per repeat."""
    torch._dynamo.reset()  # no graph of another configuration (or thread count) reused
    stance_found = _default_stance()
    if stance_found != "default":
        log(f"compile ({order}): Dynamo's stance was {stance_found!r} before compiling (left by code run earlier "
            "in this process, e.g. a probes Monitor); set back to 'default' to measure")
    compile_kw = {"backend": sizes.compile_backend}
    period = sizes.compile_log_period
    eager, bare = fresh_cnn(device), fresh_cnn(device)
    model, opt = fresh_cnn(device)
    start = time.perf_counter()
    caught: List[str] = []
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        compiled_bare = torch.compile(bare[0], **compile_kw)
        train_step(compiled_bare, bare[1], *xs[0])  # the bare graph: compiled here
        if order == "attach_then_compile":
            monitor = probed(model, f"{tmp}/{order}", period)
            compiled = torch.compile(model, **compile_kw)
        else:
            compiled = torch.compile(model, **compile_kw)
            for x, y in xs[:2]:
                train_step(compiled, opt, x, y)  # a graph without hooks, cached
            monitor = probed(compiled, f"{tmp}/{order}", period)
        try:
            cyc = {k: itertools.cycle(xs) for k in ("eager", "bare", "probed")}
            def probed_step():
                train_step(compiled, opt, *next(cyc["probed"]), monitor=monitor)

            fns = {"eager_bare": lambda: train_step(*eager, *next(cyc["eager"])),
                   "compiled_bare": lambda: train_step(compiled_bare, bare[1], *next(cyc["bare"])),
                   "compiled_probed": probed_step}
            for _ in range(2 * period):  # warm-up: compiles (and recompiles) of both kinds of step
                for fn in fns.values():
                    fn()
            warmup_s = time.perf_counter() - start
            before, seen_before = _dynamo_counts(), _examples_seen(monitor)
            logged_before, first_timed = _layer_stats_steps(monitor), monitor.global_step
            probed_steps = 0
            per: Dict[str, List[float]] = {k: [] for k in (OVERHEAD, SPEEDUP, "between_logs_ratio", "logging_ratio")}
            steps: Dict[str, List[float]] = {k: [] for k in ("eager_bare", "compiled_bare", "between_logs", "logging")}
            for r in range(sizes.compile_repeats):
                times: Dict[str, List[float]] = {k: [] for k in fns}
                kinds_repeat: List[bool] = []  # for each timed probed step: does it log?
                names = list(fns)
                for i in range(sizes.compile_rounds):
                    k = i % len(names)
                    for name in names[k:] + names[:k]:
                        if name == "compiled_probed":
                            kinds_repeat.append(monitor.logging)
                        times[name].append(timed(fns[name], device))
                probed_steps += len(times["compiled_probed"])
                between = [t for t, logs in zip(times["compiled_probed"], kinds_repeat) if not logs]
                logging = [t for t, logs in zip(times["compiled_probed"], kinds_repeat) if logs]
                if not between or not logging:
                    raise RuntimeError(f"a repeat needs both kinds of step: {sizes.compile_rounds} rounds, "
                                       f"logging every {period}")
                eb, cb = median(times["eager_bare"]), median(times["compiled_bare"])
                tb, tl = median(between), median(logging)
                default = ((DEFAULT_EVERY - 1) * tb + tl) / DEFAULT_EVERY
                per[OVERHEAD].append(default / cb)
                per[SPEEDUP].append(eb / default)
                per["between_logs_ratio"].append(tb / cb)
                per["logging_ratio"].append(tl / cb)
                for key, value in (("eager_bare", eb), ("compiled_bare", cb), ("between_logs", tb), ("logging", tl)):
                    steps[key].append(value)
            after, seen_after = _dynamo_counts(), _examples_seen(monitor)
            logged = _layer_stats_steps(monitor)
        finally:
            monitor.__exit__()
        caught = sorted({f"{w.category.__name__}: {str(w.message)[:200]}" for w in seen
                         if not issubclass(w.category, DeprecationWarning)})  # torch's own deprecations: noise
    hooks_ran = None
    if seen_before is not None and seen_after is not None:  # every probed step feeds dead units its batch
        hooks_ran = seen_after - seen_before >= probed_steps * len(xs[0][0])
    out = {OVERHEAD: spread(per[OVERHEAD]), SPEEDUP: spread(per[SPEEDUP]),
           "between_logs_ratio": spread(per["between_logs_ratio"]), "logging_ratio": spread(per["logging_ratio"]),
           "step_seconds": {k: spread(v) for k, v in steps.items()},
           "graphs_compiled_during_timed_steps": after["graphs"] - before["graphs"],
           "graph_breaks_during_timed_steps": after["graph_breaks"] - before["graph_breaks"],
           "graphs_compiled_in_all": after["graphs"], "graph_breaks_in_all": after["graph_breaks"],
           "hooks_ran_in_compiled_steps": hooks_ran,
           # logging steps in the timed part, and how many of them recorded layer-output gradient
           # norms (which need the statistics probes' hooks to have run): a blind probe shows here
           "logging_steps_timed": sum(1 for step in range(first_timed, monitor.global_step) if step % period == 0),
           "logging_steps_with_layer_stats": len(logged - logged_before), "warnings": caught[:10],
           "warmup_seconds": round(warmup_s, 1),
           # Dynamo's stance before this order compiled (set back to "default" if not) and after its
           # probed monitor was detached: anything but "default" there is left for the rest of the process
           "stance_found_before": stance_found, "stance_after_detach": _stance()}
    _default_stance()
    log(f"compile ({order}, backend {sizes.compile_backend}, {torch.get_num_threads()} thread(s)): probes cost "
        f"{out[OVERHEAD]['median']}x the compiled bare step at the default interval; compiled+probes "
        f"{out[SPEEDUP]['median']}x faster than eager bare; {out['graphs_compiled_during_timed_steps']} graphs "
        f"compiled and {out['graph_breaks_during_timed_steps']} graph breaks in the timed steps; hooks ran: {hooks_ran}")
    return out


def compiled_probes(xs, device: torch.device, sizes: Sizes, tmp: str, counts: List[int], log) -> Dict:
    """Both keys at each thread count; the headline order is attach-then-compile (the order
    train.py and most loops take), the other is in details, and a failed order is reported."""

    def measure(n: int) -> Dict:
        by_order = {}
        for order in sizes.compile_orders:
            try:
                by_order[order] = _one_order(order, xs, device, sizes, tmp, log)
            except Exception as exc:  # no C compiler, an unsupported op, a probe Dynamo cannot trace...
                by_order[order] = _error(exc)
                log(f"compile ({order}) failed: {by_order[order]['error']}")
        head = by_order[sizes.compile_orders[0]]
        out = {"by_order": by_order}
        if "error" in head:
            out["error"] = f"{sizes.compile_orders[0]}: {head['error']}"
        else:
            out.update({OVERHEAD: head[OVERHEAD], SPEEDUP: head[SPEEDUP]})
        return out

    if not sizes.compile_all_threads:  # Inductor bakes the thread count into its kernels: each count compiles
        counts = counts[:1]
    out = at_thread_counts(measure, counts, OVERHEAD, higher_is_better=False)
    # the speed-up's headline is its own worse thread count
    measured = {n: r for n, r in out["by_threads"].items() if isinstance(r.get(SPEEDUP), dict)}
    if measured:
        pick = min(measured, key=lambda n: measured[n][SPEEDUP]["median"])
        out[SPEEDUP], out[f"{SPEEDUP}_threads"] = measured[pick][SPEEDUP], int(pick)
    else:
        out[SPEEDUP] = None
    out.update(batch=sizes.batch, backend=sizes.compile_backend, orders=list(sizes.compile_orders), method=(
        f"per order and thread count: an eager bare cnn, a compiled bare cnn and a compiled cnn with train.py's "
        f"probes (backend {sizes.compile_backend!r}), {sizes.compile_repeats} repeats x {sizes.compile_rounds} "
        f"interleaved steps (batch {sizes.batch}) after {2 * sizes.compile_log_period} warm-up steps; the probed "
        f"model logs every {sizes.compile_log_period} steps while timed, and its cost at the default interval is "
        f"composed as ({DEFAULT_EVERY - 1} x median step between logs + median logging step) / {DEFAULT_EVERY}; "
        f"{OVERHEAD} = that / compiled bare step, {SPEEDUP} = eager bare step / that; thread counts "
        f"{', '.join(map(str, counts))}"))
    return out
