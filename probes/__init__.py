"""Hook-based gradient probes for any torch model.

Attach probes to a model, step them once per training step, and read what they measured
in TensorBoard (or memory). Between logging steps they cost nothing but a check.
"""
from .activations import ActivationStats
from .base import Probe, ProbeError, suspended
from .gradients import GradientStats
from .monitor import Monitor
from .pair_scan import PairScanResult, pair_scan
from .schedule import Schedule, every
from .sinks import MemorySink, TensorBoardSink

__all__ = [
    "ActivationStats",
    "GradientStats",
    "MemorySink",
    "Monitor",
    "PairScanResult",
    "Probe",
    "ProbeError",
    "Schedule",
    "TensorBoardSink",
    "every",
    "pair_scan",
    "suspended",
]
