"""Run by tests/test_distributed.py under torchrun (2 processes): the sharded pair scan and the
record reduction on fixed inputs; rank 0 saves what it got to ``sys.argv[1]`` for the test to
compare with one process computing the same things on all the data."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.distributed import Context, pair_scan_all_ranks, setup, teardown  # noqa: E402
from models import build  # noqa: E402
from models.losses import LOSSES  # noqa: E402
from probes import DeadUnits  # noqa: E402
from probes.distributed import reduce_records, reduce_state  # noqa: E402
from probes.records import Histogram, Scalar  # noqa: E402
from probes.stats import histogram, norm, zero_fraction  # noqa: E402


def inputs():
    """What every rank and the single process share: a cnn, images, and a batch of values."""
    torch.manual_seed(0)
    model = build("cnn").eval()
    images = torch.rand(7, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    values = torch.randn(6, 50, generator=torch.Generator().manual_seed(2)).relu()  # rows = examples
    return model, images, values


def relu_net_and_rows():
    """Unit i of the ReLU fires exactly where column i is positive: rows 0-1 (rank 0's share)
    fire unit 0, rows 2-3 (rank 1's) unit 1; units 2 and 3 never fire."""
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(4))
        net[0].bias.zero_()
    rows = torch.zeros(4, 4)
    rows[0:2, 0] = 1.0
    rows[2:4, 1] = 1.0
    return net, rows


def main() -> None:
    ctx: Context = setup("cpu")
    model, images, values = inputs()
    scan = pair_scan_all_ranks(ctx, model, images, LOSSES["keras"]["categorical"], norms_for=5)
    mine = ctx.shard(values)  # 3 rows each
    # Each record says how it combines; a rank's output gradient is its own / world size
    # (GradientStats scales it so), and norms of a tensor split over ranks combine as l2.
    records = [Scalar("activation_zero_fraction/x", 0, zero_fraction(mine), "mean"),
               Histogram("activations/x", 0, histogram(mine), "histogram"),
               Scalar("output_grad_norm/x", 0, norm(mine) / ctx.world_size, "l2"),
               Scalar("grad_norm/w", 0, norm(values), "same")]  # identical on every rank: left alone
    reduced = reduce_records(records)
    net, rows = relu_net_and_rows()
    dead = DeadUnits().attach(net)
    net(ctx.shard(rows))
    reduce_state([dead])  # dead units: over every rank's examples
    if ctx.is_main:
        torch.save({"logits": scan.logits, "all_zero": scan.all_zero, "norms": scan.layer_norms,
                    "zero_fraction": reduced[0].value, "hist": tuple(reduced[1].hist),
                    "output_grad_norm": reduced[2].value, "grad_norm": reduced[3].value,
                    "dead_units": dead.summary()}, sys.argv[1])
    teardown(ctx)


if __name__ == "__main__":
    main()
