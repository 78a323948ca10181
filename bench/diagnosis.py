"""Calibration corpus of the diagnosis: faulty and healthy setups, several seeds each.

    python bench/diagnosis.py            # every setup, 3 seeds: a few minutes on 2 cores
    python bench/diagnosis.py --quick    # 1 seed each
    python bench/diagnosis.py --only dying-relu,mlp-b32   # some setups (not written to diagnosis.json)

Runs each setup of bench/diagnosis_corpus/ as a user would (probes.check, probes.watch, then
monitor.diagnose()) and writes ``diagnosis.json`` next to this file: ``named`` (faulty runs whose
expected finding fired) of ``faulty`` (faulty runs), ``false_alarms`` (healthy runs with any
warning or error) of ``healthy`` (healthy runs), per setup the same, every run's findings and the
statistics each rule judged, and per statistic its range over healthy and faulty runs: the
margins quoted in probes/thresholds.py. Prints the confusion table.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: the repository's packages, bench among them

import torch  # noqa: E402

from bench.diagnosis_corpus.faulty import FAULTY  # noqa: E402
from bench.diagnosis_corpus.healthy import HEALTHY  # noqa: E402
from bench.diagnosis_corpus.runner import run  # noqa: E402

SEEDS = {"full": (0, 1, 2), "quick": (0,)}
GOALS = {"named_fraction_per_setup": 0.9, "false_alarms": 0}


def margins(runs: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Per statistic: min and max over healthy runs, and over the faulty runs of each setup."""
    out: Dict[str, Dict[str, Any]] = {}
    for r in runs:
        group = "healthy" if r["expected"] is None else r["setup"]
        for key, value in r["measures"].items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            lo_hi = out.setdefault(key, {}).setdefault(group, [value, value])
            lo_hi[0], lo_hi[1] = min(lo_hi[0], value), max(lo_hi[1], value)
    return out


def table(results: Dict[str, Any]) -> str:
    lines = [f"{'setup':<28} {'expected':<28} {'named':>7}  findings (warning and worse; * = from check)"]
    for name, s in results["setups"].items():
        score = f"{s['named']}/{s['runs']}" if s["expected"] else f"{s['false_alarms']}!/{s['runs']}"
        seen = sorted({i for r in s["detail"] for i in r["warnings"]})
        checked = {i for r in s["detail"] for i in r["from_check"]}
        lines.append(f"{name:<28} {s['expected'] or '(healthy)':<28} {score:>7}  "
                     + ", ".join(i + ("*" if i in checked else "") for i in seen))
    lines.append("")
    lines.append(f"named {results['named']}/{results['faulty']} faulty runs (without probes.check: "
                 f"{results['named_in_training']}/{results['faulty']}); false alarms "
                 f"{results['false_alarms']}/{results['healthy']} healthy runs; {results['seconds']:.0f} s")
    lines.append(f"goals: every faulty setup named in >= 90% of its seeds: "
                 f"{'met' if results['goals_met']['named'] else 'NOT met'}; no false alarm: "
                 f"{'met' if results['goals_met']['false_alarms'] else 'NOT met'}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one seed per setup (default: 3)")
    p.add_argument("--only", help="comma-separated setup names (the json is then written only with --out)")
    p.add_argument("--out", help="where to write the results (default: bench/diagnosis.json, "
                   "nowhere with --only)")
    args = p.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    setups = FAULTY + HEALTHY
    if args.only:
        wanted = set(args.only.split(","))
        setups = [s for s in setups if s.name in wanted]
    seeds = SEEDS["quick" if args.quick else "full"]
    started = time.time()
    runs: List[Dict[str, Any]] = []
    total = len(setups) * len(seeds)
    for setup in setups:
        for seed in seeds:
            r = run(setup, seed)
            runs.append(r)
            verdict = ("named" if r["named"] else "MISSED") if setup.expected else \
                ("clean" if not r["warnings"] else "FALSE ALARM")
            print(f"[{time.time() - started:6.1f}s] {len(runs)}/{total} {setup.name} seed {seed}: {verdict} "
                  f"({r['seconds']:.1f}s) {', '.join(f'{k}:{v}' for k, v in r['findings'].items())}", flush=True)
    per: Dict[str, Any] = {}
    for setup in setups:
        mine = [r for r in runs if r["setup"] == setup.name]
        per[setup.name] = {"expected": setup.expected, "fault": setup.fault, "runs": len(mine),
                           "named": sum(bool(r["named"]) for r in mine) if setup.expected else None,
                           "named_in_training": sum(bool(r["named_in_training"]) for r in mine)
                           if setup.expected else None,
                           "false_alarms": sum(bool(r["warnings"]) for r in mine) if not setup.expected else None,
                           "detail": mine}
    faulty = [r for r in runs if r["expected"]]
    healthy = [r for r in runs if not r["expected"]]
    results = {
        "named": sum(bool(r["named"]) for r in faulty), "faulty": len(faulty),
        "false_alarms": sum(bool(r["warnings"]) for r in healthy), "healthy": len(healthy),
        "named_in_training": sum(bool(r["named_in_training"]) for r in faulty),
        "mode": "quick" if args.quick else "full", "seeds": list(seeds), "seconds": round(time.time() - started, 1),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "goals": GOALS,
        "goals_met": {"named": all(s["named"] >= GOALS["named_fraction_per_setup"] * s["runs"]
                                   for s in per.values() if s["expected"]),
                      "false_alarms": sum(bool(r["warnings"]) for r in healthy) == GOALS["false_alarms"]},
        "margins": margins(runs),
        "setups": per,
    }
    print(table(results))
    out = args.out or (None if args.only else str(Path(__file__).resolve().parent / "diagnosis.json"))
    if out:
        Path(out).write_text(json.dumps(results, indent=1) + "\n")
        print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
