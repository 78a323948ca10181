"""The diagnosis of a train.py run: probes.diagnose over each run's statistics (with what
probes.check found before training), plus the comparison of scaled-conv's variants; written to
the console, summary.json and TensorBoard."""
from __future__ import annotations

from typing import Any, Dict, List

from probes.diagnosis import Finding, compare_update_ratios, diagnose, report

from .run import Run


def findings_for(runs: List[Run], facts: Dict[str, Any]) -> List[Finding]:
    """Findings of one run, or of several variants side by side (``--compare``).

    With variants, each run is diagnosed on its own (its label goes into the evidence) and
    their update ratios are compared in one ``update-ratio-imbalance`` finding, which then
    stands for the per-variant ones of that id (its evidence keeps their within-variant spreads).
    """
    scan = dict(facts["pair_scan"], step=runs[0].monitor.global_step) if "pair_scan" in facts else None
    if len(runs) == 1:
        r = runs[0]
        return diagnose(r.monitor.summary(), scalars=r.memory.scalars, model=r.model, pair_scan=scan,
                        checks=r.monitor.checks)
    findings = compare_update_ratios({f"variant {r.label}": r.monitor.summary() for r in runs})
    merged = bool(findings)
    for r in runs:
        for f in diagnose(r.monitor.summary(), scalars=r.memory.scalars, model=r.model, pair_scan=scan,
                          checks=r.monitor.checks):
            if merged and f.id == "update-ratio-imbalance":
                continue
            f.evidence["run"] = f"variant {r.label}"
            f.message = f"variant {r.label}: {f.message}"
            findings.append(f)
    return findings


def as_json(findings: List[Finding]) -> List[Dict[str, Any]]:
    return [f.to_dict() for f in findings]


def as_text(findings: List[Finding]) -> str:
    return report(findings)
