"""Hook-based gradient probes for any torch model.

Attach probes to a model, step them once per training step, and read what they measured
in TensorBoard (or memory). Between logging steps they cost nothing but a check.
"""
from .activations import ActivationStats
from .api import PROBES, make_probes, watch
from .base import Probe, ProbeError, suspended
from .check import check
from .dead_input import DeadInputs
from .dead_units import DeadUnits
from .diagnosis import Finding, compare_update_ratios, diagnose
from .frozen import FrozenWeights
from .gradients import GradientStats
from .inputs import InputStats
from .monitor import Monitor
from .nonfinite import NonFiniteEvent, NonFiniteSentinel
from .outputs import OutputStats
from .pair_scan import PairScanResult, pair_scan
from .schedule import Schedule, every
from .sinks import MemorySink, NullSink, Prefixed, Sink, Tee, TensorBoardSink
from .update_ratio import UpdateRatio
from .weight_change import WeightChange

__all__ = [
    "ActivationStats",
    "DeadInputs",
    "DeadUnits",
    "Finding",
    "FrozenWeights",
    "GradientStats",
    "InputStats",
    "MemorySink",
    "Monitor",
    "NonFiniteEvent",
    "NonFiniteSentinel",
    "NullSink",
    "OutputStats",
    "PROBES",
    "PairScanResult",
    "Prefixed",
    "Probe",
    "ProbeError",
    "Schedule",
    "Sink",
    "Tee",
    "TensorBoardSink",
    "UpdateRatio",
    "WeightChange",
    "check",
    "compare_update_ratios",
    "diagnose",
    "every",
    "make_probes",
    "pair_scan",
    "suspended",
    "watch",
]
