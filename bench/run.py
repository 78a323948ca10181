"""Benchmark: probe overhead, pair scan and training throughput, as ratios from one run.

    python bench/run.py            # full: ~10 minutes on 2 cores
    python bench/run.py --quick    # under 3 minutes on 2 cores
    python bench/run.py --smoke    # seconds: only checks that everything runs

Writes ``results.json`` and ``RESULTS.md`` next to this file (``--out`` elsewhere) and
prints a table. Every figure is a median over repeats with its spread (min-max). The
things compared run interleaved (A B A B ..., order rotated each round) and each ratio is
taken within one repeat, so that load from other processes, which comes and goes, falls
on both sides. Runs on the CPU, and also on CUDA when a GPU is present. The process keeps
freed memory for reuse, as train.py's does (``--malloc``, experiments/allocator.py): every
figure, bare steps included, is measured under the same setting.

The benchmarks themselves are in bench/benchmarks/, one module each; this file is the CLI.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: the repository's packages, bench among them

import torch  # noqa: E402

from bench.benchmarks.compiled_probes import compiled_probes  # noqa: E402
from bench.benchmarks.configurations import configurations  # noqa: E402
from bench.benchmarks.keras_step import train_vs_keras  # noqa: E402
from bench.benchmarks.memory import cuda_memory, memory  # noqa: E402
from bench.benchmarks.overhead import probe_overhead  # noqa: E402
from bench.benchmarks.pair_scans import pair_scans  # noqa: E402
from bench.benchmarks.port_speed import port_vs_plain  # noqa: E402
from bench.benchmarks.small_model import BATCH as SMALL_BATCH, probe_overhead_small  # noqa: E402
from bench.benchmarks.throughput import throughput  # noqa: E402
from bench.results import assemble, table  # noqa: E402
from bench.results_report import write_report  # noqa: E402
from bench.sizes import SIZES, Sizes  # noqa: E402
from bench.timing import thread_counts  # noqa: E402
from bench.workload import fixed_batches, fresh_cnn, train_step  # noqa: E402
from experiments import allocator  # noqa: E402
from experiments.mnist import load_mnist  # noqa: E402


def measure(data, device: torch.device, sizes: Sizes, tmp: str, threads_default: int, log) -> Dict:
    """Every benchmark on one device: ``details[device.type]`` of results.json. The ratios of
    issue 14 are measured at one thread and at torch's default count (each sets its own and
    puts the run's back); the others at the count ``configurations`` chose."""
    xs = fixed_batches(data["train"], sizes.batch, device)  # one seeded shuffle; each takes a prefix
    counts = thread_counts(threads_default) if device.type == "cpu" else [torch.get_num_threads()]
    d: Dict = {"configurations": configurations(xs[:4], device, sizes, log),  # sets the thread count
               "probe_overhead": probe_overhead(xs, device, sizes, tmp, log, counts)}
    small = fixed_batches(data["train"], SMALL_BATCH, device)
    d["small_model"] = probe_overhead_small(small, device, sizes, tmp, counts, log)
    d["port_speed"] = port_vs_plain(xs[:4], device, sizes, counts, log)
    d["compiled_probes"] = compiled_probes(xs[:4], device, sizes, tmp, counts, log)
    d["keras"] = train_vs_keras(xs[:4], device, sizes, tmp, counts, log)
    if device.type == "cpu":
        d["memory"] = memory(sizes, torch.get_num_threads(), log)
    else:
        d["memory"] = cuda_memory(xs, device, tmp)
    model, opt = fresh_cnn(device)  # a briefly trained cnn for the scan
    for x, y in xs[:3]:
        train_step(model, opt, x, y)
    d["pair_scan"] = pair_scans(model, data["test"], device, sizes, log)
    d["throughput"] = throughput(data["train"], xs[0], device, sizes, tmp, log)
    return d


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer repeats and pairs: under 3 minutes on 2 cores")
    mode.add_argument("--smoke", action="store_true", help="tiny sizes, seconds: checks that the benchmark runs")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent),
                   help="folder for results.json and RESULTS.md (default: bench/)")
    p.add_argument("--malloc", choices=allocator.CHOICES, default="reuse",
                   help="as train.py's flag (experiments/allocator.py): the run measures train.py's process as it "
                        "runs by default (default: reuse)")
    args = p.parse_args(argv)
    malloc = allocator.use(args.malloc)  # process-wide: before anything is allocated, for every benchmark alike

    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    sizes = SIZES[mode_name]
    started, load_start, threads_default = time.time(), os.getloadavg()[0], torch.get_num_threads()

    def log(msg: str) -> None:
        print(f"[{time.time() - started:6.1f}s] {msg}", flush=True)

    data = load_mnist(allow_download=False)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    details: Dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for device in devices:
            log(f"== {device} ==")
            details[device.type] = measure(data, device, sizes, tmp, threads_default, log)
    results = assemble(details, mode_name, sizes, started, load_start, threads_default)
    results["malloc"] = malloc.message
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "RESULTS.md").write_text(write_report(results))
    print(table(results))
    print(f"written: {out / 'results.json'}, {out / 'RESULTS.md'} ({results['seconds']}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
