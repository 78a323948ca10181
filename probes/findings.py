"""A finding of the diagnosis, how findings are linked (cause, consequences), and the report.

One fault shows in several statistics: a dead layer also stops the gradient of every layer
below it; a softmax over one unit makes every gradient exactly zero, so no weight moves and
the loss stays put. Each rule reports what it sees; :func:`link` then puts a consequence
under its cause (``CAUSES``), so that the report leads with what to fix.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

SEVERITIES = ("info", "warning", "error")


@dataclass
class Finding:
    """One diagnosis: what was seen, how sure, the numbers that show it, why, and what to do.

    ``consequences`` are the findings this one explains (set by :func:`link`), ``caused_by``
    the id of the finding that explains this one.
    """

    id: str
    severity: str  # "info" | "warning" | "error"
    message: str
    evidence: Dict[str, Any] = field(default_factory=dict)
    cause: str = ""
    fix: str = ""
    consequences: List["Finding"] = field(default_factory=list, repr=False, compare=False)
    caused_by: Optional[str] = field(default=None, compare=False)

    def to_dict(self) -> Dict[str, Any]:
        """Plain values for summary.json; links as ids, present only when there are any."""
        out = {"id": self.id, "severity": self.severity, "message": self.message, "evidence": dict(self.evidence),
               "cause": self.cause, "fix": self.fix}
        if self.consequences:
            out["consequences"] = [c.id for c in self.consequences]
        if self.caused_by:
            out["caused_by"] = self.caused_by
        return out

    def describe(self, indent: str = "") -> str:
        """The finding as a short paragraph: message, cause, fix."""
        text = f"{indent}[{self.severity}] {self.id}: {self.message}"
        if self.cause:
            text += f"\n{indent}    cause: {self.cause}"
        if self.fix:
            text += f"\n{indent}    fix: {self.fix}"
        return text


def at_least(findings: Sequence[Finding], severity: str) -> List[Finding]:
    """The findings of ``severity`` or worse."""
    rank = SEVERITIES.index(severity)
    return [f for f in findings if SEVERITIES.index(f.severity) >= rank]


def _rank(f: Finding) -> int:
    """A cause ranks with the worst of what it explains."""
    return max([SEVERITIES.index(f.severity)] + [_rank(c) for c in f.consequences])


def report(findings: Sequence[Finding]) -> str:
    """All findings as text: causes first, worst first, each followed by what it explains
    (indented); one line when there is nothing to report."""
    if not findings:
        return "diagnosis: nothing abnormal found"
    roots = [f for f in findings if not any(f is c for r in findings for c in r.consequences)]
    lines: List[str] = []

    def add(f: Finding, depth: int) -> None:
        lines.append(f.describe("    " * depth) if depth == 0 else
                     f.describe("    " * depth).replace(f"[{f.severity}]", f"-> [{f.severity}]", 1))
        for c in f.consequences:
            add(c, depth + 1)

    for f in sorted(roots, key=lambda f: -_rank(f)):
        add(f, 0)
    return "diagnosis:\n" + "\n".join(lines)


# -- causes and their consequences ---------------------------------------------------------
Applies = Callable[[Finding, Finding], bool]


def _always(cause: Finding, effect: Finding) -> bool:
    return True


def _below_dead_layer(cause: Finding, effect: Finding) -> bool:
    """A vanishing gradient explained by a dead layer: its first (input-side) layer is below one."""
    below = cause.evidence.get("weights_below_dead_layers") or []
    layers = effect.evidence.get("layers") or effect.evidence.get("weight_change_layers") or []
    return bool(layers) and layers[0] in below


def _first_layer_slowest(cause: Finding, effect: Finding) -> bool:
    """Layers that learn at different speeds because the gradient vanished below them."""
    layers = cause.evidence.get("layers") or cause.evidence.get("weight_change_layers") or []
    return bool(layers) and effect.evidence.get("slowest") in layers[:-1]


def _at_the_output(cause: Finding, effect: Finding) -> bool:
    """A non-finite value that started at the loss or the output: not inside the model."""
    return effect.evidence.get("where") in ("loss", "gradient", "scalar") or \
        effect.evidence.get("at_output", False)


#: cause id -> [(consequence id, when)]: the first cause present that applies takes the consequence.
#: A cause that is another's consequence is listed after it (so that links are one level deep).
CAUSES: Dict[str, List[Tuple[str, Applies]]] = {
    "improper-output-activation": [("non-finite", _at_the_output), ("zero-gradient", _always),
                                   ("loss-not-decreasing", _always), ("dead-relu", _always),
                                   ("vanishing-gradient", _always), ("unstable-loss", _always)],
    "abnormal-input": [("saturation", _always), ("exploding-gradient", _always), ("non-finite", _always),
                       ("unstable-loss", _always), ("dead-relu", _always), ("loss-not-decreasing", _always),
                       ("vanishing-gradient", _always)],
    "improper-loss": [("loss-not-decreasing", _always), ("vanishing-gradient", _always)],
    "zero-gradient": [("loss-not-decreasing", _always), ("dead-relu", _always)],
    "exploding-gradient": [("non-finite", _always), ("unstable-loss", _always), ("dead-relu", _always),
                           ("loss-not-decreasing", _always)],
    "unstable-loss": [("non-finite", _always), ("dead-relu", _always), ("loss-not-decreasing", _always)],
    "dead-relu": [("vanishing-gradient", _below_dead_layer), ("loss-not-decreasing", _always)],
    "saturation": [("vanishing-gradient", _always), ("loss-not-decreasing", _always)],
    "vanishing-gradient": [("update-ratio-imbalance", _first_layer_slowest), ("loss-not-decreasing", _always)],
}


def link(findings: List[Finding]) -> List[Finding]:
    """Put each consequence under its first cause present (in :data:`CAUSES` order, so a root
    cause outranks an intermediate one); returns ``findings``, linked in place.

    A cause listed as another's consequence comes later in :data:`CAUSES`, so a finding that
    explains others is never itself put under a cause after that: one level, no cycles."""
    by_id = {f.id: f for f in findings}
    for f in findings:
        f.consequences, f.caused_by = [], None
    for cause_id, effects in CAUSES.items():
        cause = by_id.get(cause_id)
        if cause is None or cause.caused_by:
            continue
        for effect_id, applies in effects:
            effect = by_id.get(effect_id)
            if effect is None or effect.caused_by:
                continue
            if applies(cause, effect):
                effect.caused_by = cause.id
                cause.consequences.append(effect)
    return findings
