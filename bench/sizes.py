"""How much each mode of the benchmark measures (``--smoke``, ``--quick``, the full run)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Sizes:
    batch: int  # training batch (the cnn recipe's 128)
    overhead_rounds: int  # interleaved training steps per configuration and repeat
    repeats: int  # repeats of every timed comparison
    peak_steps: int  # steps per memory child process
    peak_repeats: int
    growth_steps: int  # steps of the memory-growth run
    growth_batch: int
    growth_every: int
    flag_images: int  # pair scan flags: images x 10 targets
    loop_pairs: int  # pairs timed one at a time (extrapolated)
    norm_images: int  # pair scan norms: images x 10 targets
    scan_repeats: int
    train_window: int  # training steps per interleaved window
    train_repeats: int
    config_rounds: int  # steps per configuration when trying threads / channels_last / compile
    compile: bool
    baseline_batches: tuple = (128, 1000)  # pairs per batch tried for the batched baseline (b)
    small_rounds: int = 3  # small-model windows (of 100 steps) per configuration and repeat
    # torch.compile with probes (bench/benchmarks/compiled_probes.py)
    compile_rounds: int = 8  # interleaved steps per configuration and repeat
    compile_repeats: int = 3
    compile_log_period: int = 4  # the probed model logs every this many steps while timed
    compile_backend: str = "inductor"
    compile_orders: tuple = ("attach_then_compile", "compile_then_attach")
    compile_all_threads: bool = True  # False: one thread only (each thread count compiles afresh, ~1-2 min)
    keras_window: int = 4  # steps per window of train_vs_keras


SIZES = {
    # smoke compiles with the "aot_eager" backend: Dynamo's tracing, guards and graph breaks, and
    # AOTAutograd, without Inductor's code generation (~30 s a graph on 2 cores): its figures only
    # show that the benchmark runs
    "smoke": Sizes(16, 2, 2, 2, 1, 12, 8, 4, 20, 4, 3, 2, 2, 2, 2, False, (128,), small_rounds=1, compile_rounds=4,
                   compile_repeats=2, compile_log_period=2, compile_backend="aot_eager",
                   compile_orders=("attach_then_compile",), keras_window=2),
    "quick": Sizes(128, 4, 3, 3, 2, 150, 16, 10, 1000, 40, 60, 3, 4, 6, 4, False, (128,), small_rounds=2,
                   compile_rounds=8, compile_repeats=2, compile_orders=("attach_then_compile",),
                   compile_all_threads=False, keras_window=3),
    "full": Sizes(128, 10, 5, 20, 3, 2000, 16, 10, 1000, 150, 1000, 3, 15, 12, 8, True, small_rounds=3,
                  compile_rounds=12, compile_repeats=3, keras_window=5),
}
