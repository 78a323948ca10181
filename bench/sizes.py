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


SIZES = {
    "smoke": Sizes(16, 2, 2, 2, 1, 12, 8, 4, 20, 4, 3, 2, 2, 2, 2, False, (128,)),
    "quick": Sizes(128, 4, 3, 3, 2, 150, 16, 10, 1000, 40, 60, 3, 4, 6, 4, False, (128,)),
    "full": Sizes(128, 10, 5, 20, 3, 2000, 16, 10, 1000, 150, 1000, 3, 15, 12, 8, True),
}
