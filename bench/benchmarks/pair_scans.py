"""Pair scan: flags and norms over test images x 10 targets, against the question's
one-pair-at-a-time loop and against one ordinary batched forward+backward over the pairs."""
from __future__ import annotations

import time
from statistics import median
from typing import Dict

import torch

from experiments.batches import to_float
from experiments.mnist import Split
from probes import pair_scan
from probes.pair_scan import inference_mode_of, output_gradients, per_pair_layer_norms

from ..sizes import Sizes
from ..timing import interleaved, spread
from ..workload import LOSS


def pair_scans(model, test: Split, device: torch.device, sizes: Sizes, log) -> Dict:
    """Flags against the loop (sampled, extrapolated), norms against the batched baseline, and
    the norms checked against the previous torch.func implementation on a few images."""
    x_all = to_float(test.images[: max(sizes.flag_images, sizes.norm_images)]).to(device)
    eye = torch.eye(10, device=device)
    params = [p for p in model.parameters() if p.requires_grad]

    def loop_sample():  # the question's get_weight_grad, one pair at a time (inference mode)
        with inference_mode_of(model):
            for k in range(sizes.loop_pairs):
                i, c = divmod(k, 10)
                model.zero_grad(set_to_none=True)
                LOSS(model(x_all[i:i + 1]), eye[c:c + 1]).sum().backward()
                all(bool((p.grad == 0).all()) for p in params)
        model.zero_grad(set_to_none=True)

    x_flags = x_all[: sizes.flag_images]
    fns = {"loop_sample": loop_sample, "flags": lambda: pair_scan(model, x_flags, LOSS)}
    times = interleaved(fns, sizes.scan_repeats, device, warmup=1)
    pairs_flags = 10 * sizes.flag_images
    loop_per_pair = [t / sizes.loop_pairs for t in times["loop_sample"]]
    speedups = [lp * pairs_flags / f for lp, f in zip(loop_per_pair, times["flags"])]

    x_norms = x_all[: sizes.norm_images]
    pairs_norms = 10 * sizes.norm_images
    x_pairs = x_norms.repeat_interleave(10, 0)
    y_pairs = eye.repeat(sizes.norm_images, 1)

    def batched(chunk):  # (b): an ordinary batched forward+backward over the same pairs
        def run():
            with inference_mode_of(model):
                model.zero_grad(set_to_none=True)
                for start in range(0, pairs_norms, chunk):
                    LOSS(model(x_pairs[start:start + chunk]), y_pairs[start:start + chunk]).sum().backward()
            model.zero_grad(set_to_none=True)
        return run

    result = {}

    def norms():
        result["scan"] = pair_scan(model, x_norms, LOSS, norms_for=sizes.norm_images)

    # (b) in batches of 128 pairs (the training batch) and, in the full run, of 1,000 too
    # (10,000 at once would hold ~10 GB of activations); the fastest is the baseline
    fns = {**{f"batched_{b}": batched(b) for b in sizes.baseline_batches}, "norms": norms}
    times_n = interleaved(fns, sizes.scan_repeats, device, warmup=1)
    times_n["batched"] = [min(ts) for ts in zip(*(times_n[f"batched_{b}"] for b in sizes.baseline_batches))]
    ratios = [n / b for n, b in zip(times_n["norms"], times_n["batched"])]

    # correctness and the previous implementation, on a few images: torch.func per pair
    few = x_norms[:2]
    with inference_mode_of(model):
        g = output_gradients(model(few).detach(), LOSS, 10)
        start = time.perf_counter()
        func_norms, _ = per_pair_layer_norms(model, few, g)
        func_per_pair = (time.perf_counter() - start) / 20
    scan = result["scan"]
    worst = max(float(((scan.layer_norms[k][:2] - v).abs() / v.abs().clamp_min(1e-30)).max()) for k, v in func_norms.items())
    out = {
        "pair_flags_speedup_vs_loop": spread(speedups, 1),
        "pair_norms_vs_batched": spread(ratios),
        "loop_seconds_per_pair": spread(loop_per_pair, 5),
        "loop_extrapolated_seconds_10000_pairs": round(median(loop_per_pair) * 10_000, 1),
        "flags_seconds": spread(times["flags"]),
        "flags_pairs": pairs_flags,
        "norms_seconds": spread(times_n["norms"]),
        "batched_seconds": spread(times_n["batched"]),
        "batched_seconds_by_batch": {str(b): spread(times_n[f"batched_{b}"]) for b in sizes.baseline_batches},
        "norms_pairs": pairs_norms,
        "norms_method": scan.norms_method,
        "norms_seconds_per_pair": round(median(times_n["norms"]) / pairs_norms, 6),
        "torch_func_seconds_per_pair": round(func_per_pair, 6),
        "norms_max_relative_difference_vs_torch_func": worst,
        "flags_all_zero_fraction": round(float(scan.all_zero.float().mean()), 4),
        "method": (f"flags: pair_scan over {sizes.flag_images} test images x 10 targets vs the one-pair loop timed on "
                   f"{sizes.loop_pairs} pairs and extrapolated to {pairs_flags}; norms: pair_scan with norms_for="
                   f"{sizes.norm_images} vs a batched forward+backward over the same {pairs_norms} pairs in batches of "
                   f"{' or '.join(map(str, sizes.baseline_batches))} pairs (the fastest in each repeat); "
                   f"{sizes.scan_repeats} interleaved repeats each"),
    }
    log(f"pair scan: flags {out['pair_flags_speedup_vs_loop']['median']}x faster than the loop; norms "
        f"{out['pair_norms_vs_batched']['median']}x the batched forward+backward")
    return out
