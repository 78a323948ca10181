"""What every rule reads (:class:`RunFacts`) and small helpers for their messages."""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .. import tags

Series = Sequence[Tuple[int, float]]


@dataclass
class RunFacts:
    """One run's statistics: ``summary`` (``Monitor.summary()``), ``scalars`` (``{tag: [(step,
    value), ...]}``), the weight matrices in order (input first) and the model's layout
    (:func:`probes.structure.describe`: ``sizes``, ``layers``)."""

    summary: Mapping[str, Any]
    scalars: Mapping[str, Series]
    order: List[str]
    structure: Mapping[str, Any] = field(default_factory=dict)

    @property
    def sizes(self) -> Mapping[str, int]:
        return self.structure.get("sizes", {})

    def layer_types(self) -> Dict[str, str]:
        """Leaf module name -> its class name."""
        return {entry[0]: entry[1] for entry in self.structure.get("layers", [])}

    def output_layer(self) -> Optional[str]:
        """The last leaf module registered: the output layer of a model written in order."""
        layers = self.structure.get("layers", [])
        return layers[-1][0] if layers else None

    def grad_norms(self) -> Dict[str, Series]:
        return tags.series(self.scalars, tags.GRAD_NORM)


def fmt(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.2g}"


def orders(ratio: float) -> str:
    n = math.log10(ratio) if ratio > 0 else float("inf")
    return f"{n:.1f} orders of magnitude"


def values(series: Series) -> List[float]:
    return [float(v) for _, v in series]


def finite_median(series: Series) -> Optional[float]:
    """Median of the finite values (a NaN after a blow-up must not hide what came before)."""
    finite = [v for v in values(series) if math.isfinite(v)]
    return statistics.median(finite) if finite else None
