"""Reproduce the four phenomena with train.py's machinery and write a Markdown report.

    python report.py            # full budget (aimed at ~10 minutes on 2 CPU cores) -> report/REPORT.md
    python report.py --quick    # for CI: 309 s when last timed on 2 shared cores, 279 s of it the cnn

Each phenomenon is trained through ``train.run`` (so the runs are ordinary train.py runs, with
TensorBoard logs, under ``<out>/runs/``), then judged from its ``summary.json``: the right
finding of the diagnosis (probes/diagnosis.py) with the numbers that justify it, and no
warning on the healthy contrasts. The report has a table *phenomenon | measured | expected |
reproduced?*, each finding in full, and the plots, copied next to it. The exit status is 1
if any phenomenon did not reproduce.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import models
import train
from experiments.mnist import DataError
from experiments.studies import STUDIES
from probes.diagnosis import SEVERITIES
from probes.thresholds import UPDATE_RATIO_SPREAD

# Budgets. The cnn needs confident predictions (target probabilities < 1e-7) before the clip
# bites, and BatchNorm's moving averages at Keras' momentum 0.99 need a few hundred steps to
# settle: many small steps on a small training set reach both (tests/test_cli.py trains the same
# budget, logging every 200 steps).
CNN_FULL = ["--train-size", "1024", "--batch-size", "32", "--epochs", "28", "--test-size", "500",
            "--scan-images", "300", "--scan-norm-images", "0", "--log-every", "100"]
# Measured: 448 steps (--train-size 512, 28 epochs) leave the smallest test probability at 1.7e-5,
# not yet clipped; 896 steps get there. --quick saves on evaluation and scan instead.
CNN_QUICK = ["--train-size", "1024", "--batch-size", "32", "--epochs", "28", "--test-size", "200",
             "--scan-images", "100", "--scan-norm-images", "0", "--log-every", "100"]
SHORT = ["--train-size", "2000", "--test-size", "200", "--log-every", "5"]
BUDGETS = {
    "full": {"cnn": CNN_FULL, "cnn-logits": CNN_FULL, "deep-sigmoid": [], "deep-relu": [], "dense-mlp": [],
             "scaled-conv": ["--train-size", "6400", "--test-size", "1000", "--log-every", "20"]},
    "quick": {"cnn": CNN_QUICK, "cnn-logits": ["--train-size", "512", "--batch-size", "32", "--epochs", "2",
                                               "--test-size", "200", "--scan-images", "100",
                                               "--scan-norm-images", "0", "--log-every", "8"],
              "deep-sigmoid": SHORT, "deep-relu": SHORT, "dense-mlp": SHORT,
              "scaled-conv": ["--train-size", "480", "--test-size", "100", "--log-every", "5"]},
}
# One run per registered model (models.SPECS), named after it, plus the cnn without the clip
# as the contrast; run name -> train.py arguments besides the budget.
EXTRA_ARGS = {"cnn": ["--loss", "keras"], "scaled-conv": ["--compare"]}
RUNS = {name: ["--model", name, *EXTRA_ARGS.get(name, [])] for name in models.SPECS}
RUNS["cnn-logits"] = ["--model", "cnn", "--loss", "logits"]
# run name -> the figure its study writes (experiments/studies.py), copied next to REPORT.md
PLOTS = {name: STUDIES[name].figure for name in models.SPECS if STUDIES[name].figure}


def finding(summary: Dict, fid: str) -> Optional[Dict]:
    return next((f for f in summary.get("findings", []) if f["id"] == fid), None)


def warnings(summary: Dict) -> List[str]:
    """Ids of the findings of severity warning or worse (summary.json keeps findings as dicts)."""
    rank = SEVERITIES.index("warning")
    return [f["id"] for f in summary.get("findings", []) if SEVERITIES.index(f["severity"]) >= rank]


@dataclass
class Verdict:
    phenomenon: str
    measured: str
    expected: str
    reproduced: bool
    runs: List[str]
    findings: List[Dict] = field(default_factory=list)


def judge_clipping(s: Dict[str, Dict]) -> Verdict:
    scan, f = s["cnn"]["pair_scan"], finding(s["cnn"], "loss-clipping-zero-grad")
    logits_zero, logits_warn = s["cnn-logits"]["pair_scan"]["all_zero"], warnings(s["cnn-logits"])
    ok = bool(f) and scan["all_zero"] > 0 and scan["all_zero_iff_target_prob_clipped"] and logits_zero == 0 \
        and not logits_warn
    measured = (f"`--loss keras`: {scan['all_zero']} of {scan['pairs']} pairs ({100 * scan['all_zero_fraction']:.1f}%) "
                f"exactly zero, iff clipped: {scan['all_zero_iff_target_prob_clipped']}, finding "
                f"`{f['id'] if f else 'none'}`; `--loss logits`: {logits_zero} zero pairs, warnings: "
                f"{', '.join(logits_warn) or 'none'}")
    return Verdict("exactly-zero gradients from the loss's probability clip (cnn)", measured,
                   "all-zero pairs exist, exactly the pairs with p < 1e-7 or p > 1 - 1e-7; `loss-clipping-zero-grad`; "
                   "none with `--loss logits`", ok, ["cnn", "cnn-logits"], [f] if f else [])


def judge_vanishing(s: Dict[str, Dict]) -> Verdict:
    f, relu = finding(s["deep-sigmoid"], "vanishing-gradient"), s["deep-relu"]
    sig_ratio = s["deep-sigmoid"]["weight_change"]["first_to_last_ratio"]
    relu_ratio, relu_warnings = relu["weight_change"]["first_to_last_ratio"], warnings(relu)
    ok = bool(f) and not relu_warnings and relu_ratio > 10 * sig_ratio
    grad = f"gradient norm first/last {f['evidence']['first_to_last_grad_norm_ratio']:.2g}, " if f else ""
    measured = (f"deep-sigmoid: {grad}mean \\|dW\\| first/last {sig_ratio:.2g}, finding "
                f"`{f['id'] if f else 'none'}`; deep-relu: \\|dW\\| first/last {relu_ratio:.2g}, warnings: "
                f"{', '.join(relu_warnings) or 'none'}")
    return Verdict("vanishing gradients (deep-sigmoid vs deep-relu)", measured,
                   "`vanishing-gradient` on deep-sigmoid, not on deep-relu; relu's first layer moves far more",
                   ok, ["deep-sigmoid", "deep-relu"], [f] if f else [])


def judge_frozen(s: Dict[str, Dict]) -> Verdict:
    summary = s["dense-mlp"]
    f, facts = finding(summary, "frozen-by-dead-input"), summary["frozen_inputs"]
    dead = finding(summary, "dead-relu")
    mislabelled = bool(dead) and dead["severity"] != "info"  # dead ReLUs offered as the explanation
    ok = bool(f) and facts["relation"] == "equal" and not mislabelled
    measured = (f"{facts['always_zero_inputs']} of {facts['inputs']} pixels 0 in all {facts['examples_seen']} images; "
                f"{facts['frozen_first_layer_rows']} first-layer rows never changed (relation {facts['relation']}); "
                f"finding `{f['id'] if f else 'none'}`" + (f"; `dead-relu` also: {dead['message']}" if dead else ""))
    return Verdict("first-layer weights that never change (dense-mlp)", measured,
                   "frozen rows = always-zero pixels; `frozen-by-dead-input`, not `dead-relu`", ok, ["dense-mlp"],
                   [x for x in (f, dead) if x])


def judge_reparam(s: Dict[str, Dict]) -> Verdict:
    summary = s["scaled-conv"]
    f = finding(summary, "update-ratio-imbalance")
    loss = {v: facts["final_loss"] for v, facts in summary["variants"].items()}
    ok = bool(f) and summary["max_abs_output_diff_at_init"] < 1e-6 and min(loss, key=loss.get) == "1"
    spread = f"{f['evidence']['spread']:.0f}x on {f['evidence']['layer']}" if f else "no finding"
    measured = (f"same function at step 0 (max diff {summary['max_abs_output_diff_at_init']:.1g}); test loss "
                + ", ".join(f"v{v} {x:.3f}" for v, x in loss.items())
                + f"; \\|\\|update\\|\\|/\\|\\|weight\\|\\| apart {spread}")
    return Verdict("reparameterised nets train at different speeds (scaled-conv --compare)", measured,
                   f"variant 1 lowest loss; `update-ratio-imbalance` (ratios >= {UPDATE_RATIO_SPREAD:.0f}x apart)", ok,
                   ["scaled-conv"],
                   [f] if f else [])


JUDGES: List[Callable[[Dict[str, Dict]], Verdict]] = [judge_clipping, judge_vanishing, judge_frozen, judge_reparam]


def run_all(budget: str, runs_dir: Path, data_dir: Optional[str]) -> Tuple[Dict[str, Dict], Dict[str, float]]:
    summaries, seconds = {}, {}
    for i, (name, args) in enumerate(RUNS.items(), 1):
        argv = [*args, *BUDGETS[budget][name], "--run-dir", str(runs_dir / name)]
        if data_dir:
            argv += ["--data-dir", data_dir]
        print(f"\n[report {i}/{len(RUNS)}] python train.py {' '.join(argv)}", flush=True)
        start = time.time()
        summaries[name] = train.run(train.parse_args(argv))
        seconds[name] = time.time() - start
    return summaries, seconds


def markdown(verdicts: List[Verdict], seconds: Dict[str, float], budget: str, out: Path, runs_dir: Path) -> str:
    lines = ["# Gradient probes: the four phenomena, reproduced", "",
             f"`python report.py{' --quick' if budget == 'quick' else ''}`: {sum(seconds.values()):.0f} s in all "
             f"({', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())}). Runs (TensorBoard logs, summary.json): "
             f"`{runs_dir}`.", "",
             "| phenomenon | measured | expected | reproduced? |", "| --- | --- | --- | --- |"]
    for v in verdicts:
        lines.append(f"| {v.phenomenon} | {v.measured} | {v.expected} | {'yes' if v.reproduced else '**NO**'} |")
    for v in verdicts:
        lines += ["", f"## {v.phenomenon}", ""]
        for f in v.findings:
            lines += [f"**[{f['severity']}] `{f['id']}`**: {f['message']}", "",
                      f"- cause: {f['cause']}", f"- fix: {f['fix']}",
                      "- evidence: " + ", ".join(f"`{k}`: {_short(x)}" for k, x in f["evidence"].items()), ""]
        if not v.findings:
            lines += ["No finding.", ""]
        for run in v.runs:
            plot = PLOTS.get(run)
            if plot and (out / f"{run}-{plot}").exists():
                lines += [f"![{run}]({run}-{plot})", ""]
    return "\n".join(lines) + "\n"


def _short(x: object, limit: int = 160) -> str:
    text = f"{x:.3g}" if isinstance(x, float) else str(x)
    return text if len(text) <= limit else text[:limit] + " …"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="report.py", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small budgets, for CI (default: the ~10-minute budget)")
    p.add_argument("--out", default="report", help="folder of REPORT.md and the plots; its runs/ is replaced "
                   "(default: report)")
    p.add_argument("--data-dir", help="MNIST folder (default: $MNIST_DIR, else ./data)")
    args = p.parse_args(argv)
    budget = "quick" if args.quick else "full"
    out = Path(args.out)
    runs_dir = out / "runs"
    if runs_dir.exists():
        shutil.rmtree(runs_dir)  # the report's own runs from last time
    out.mkdir(parents=True, exist_ok=True)
    try:
        summaries, seconds = run_all(budget, runs_dir, args.data_dir)
    except DataError as exc:
        print(f"report.py: error: {exc}", file=sys.stderr)
        return 1
    for run, plot in PLOTS.items():
        if (runs_dir / run / plot).exists():
            shutil.copyfile(runs_dir / run / plot, out / f"{run}-{plot}")
    verdicts = [judge(summaries) for judge in JUDGES]
    (out / "REPORT.md").write_text(markdown(verdicts, seconds, budget, out, runs_dir))
    print("\nphenomenon | reproduced?")
    for v in verdicts:
        print(f"{v.phenomenon} | {'yes' if v.reproduced else 'NO'}: {v.measured}")
    print(f"written: {out / 'REPORT.md'}")
    return 0 if all(v.reproduced for v in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
