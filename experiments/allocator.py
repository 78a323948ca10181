"""Keep freed memory for the next step: glibc's malloc settings for a training process.

A cnn training step on a CPU allocates and frees 160-220 MB of activations and gradients (its
first step faults 40,000-55,000 pages), tensors of 2 to 22 MB each. glibc's malloc gives an
allocation that large its own ``mmap`` and hands freed memory back to the kernel, so every
step writes to fresh pages: 10,000-37,000 page faults a step here, each paid inside the op
that first writes its output (a ReLU, a BatchNorm backward), and with two threads the faults
of both threads wait on each other.

:func:`keep_freed_memory` raises glibc's mmap threshold to its largest (32 MiB on 64-bit) and
its trim threshold to 1 GiB: tensors up to 32 MiB then come from the heap, and what a step
frees stays there for the next step. Measured on the cnn (batch 128, this 2-core machine,
separate processes alternating, 12 steps each, three rounds): one thread 235-239 ms a step ->
191-194 ms, two threads 118-141 ms -> 105-109 ms; page faults 5-7x fewer; peak RSS +1-7%.
PyTorch's CPU performance guide recommends jemalloc or tcmalloc for the same reason; this
needs nothing installed. It changes no number the model computes.

It is a process-wide setting, so it belongs to a program's start (``train.py``,
``bench/run.py``), never to the probes library. Elsewhere than glibc (macOS, Windows, musl)
it does nothing and says so.
"""
from __future__ import annotations

import ctypes
import platform
from typing import NamedTuple

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
#: the largest mmap threshold glibc accepts: 4 MiB * sizeof(long), 32 MiB on 64-bit
MMAP_THRESHOLD_MAX = 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)
TRIM_THRESHOLD = 1 << 30

#: the choices of ``train.py --malloc``
CHOICES = ("reuse", "system")


class Setting(NamedTuple):
    reused: bool  # whether freed memory is now kept for reuse
    message: str  # in words, for a run's first lines


def keep_freed_memory() -> Setting:
    """Set glibc's thresholds (see the module docstring); say what was done or why not."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return Setting(False, f"system malloc (no glibc here: {platform.system()})")
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError) as exc:
        return Setting(False, f"system malloc (mallopt not found: {exc})")
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) != 1 or mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1:
        return Setting(False, "system malloc (glibc refused the thresholds)")
    return Setting(True, "freed memory reused (malloc)")


def use(choice: str) -> Setting:
    """``train.py --malloc``: ``"reuse"`` keeps freed memory (:func:`keep_freed_memory`),
    ``"system"`` leaves glibc's defaults as they are."""
    if choice not in CHOICES:
        raise ValueError(f"malloc choice must be one of {CHOICES}, not {choice!r}")
    if choice == "system":
        return Setting(False, "system malloc (--malloc system)")
    return keep_freed_memory()
