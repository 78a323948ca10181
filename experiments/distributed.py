"""Training on several processes (``torchrun --nproc_per_node=N train.py ...``).

torchrun starts N copies of ``train.py`` and tells each its place through environment
variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``).
:func:`setup` turns them into a :class:`Context`; without them it returns a one-process
context whose helpers do nothing, so ``train.py`` runs one code path either way.

How the work is split, so that N processes train the same model as one process would:

* Every rank draws the same global batches (same seeded generator) and takes its own
  contiguous slice of each one (:meth:`Context.shard`).
* Each rank's loss is its slice's mean, rescaled by ``len(slice) * N / len(batch)``
  (:meth:`Context.rank_loss`). DDP averages gradients over ranks, so the gradient the
  optimizer sees is that of the global batch's mean loss, even when the last batch does
  not split evenly.
* Evaluation and the cnn's pair scan split their images by rank and sum or gather.
* Only rank 0 writes: run directory, TensorBoard, summary, plots. Other ranks print
  nothing to stdout and log to a :class:`probes.NullSink`.
"""
from __future__ import annotations

import gc
import os
import sys
from dataclasses import dataclass
from typing import List, Sequence

import torch
import torch.distributed as dist
from torch import nn

from .mnist import DataError, Split


def bounds(n: int, world_size: int, rank: int) -> tuple:
    """[start, stop) of rank's contiguous share of n items, as ``torch.tensor_split`` cuts them."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


@dataclass
class Context:
    """Where this process stands: rank, world size and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @classmethod
    def current(cls, device: torch.device) -> "Context":
        """The context of the process group this process has joined (one process if none)."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls(0, 1, device)
        return cls(dist.get_rank(), dist.get_world_size(), device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch (the whole batch on one process)."""
        if not self.distributed:
            return batch
        start, stop = bounds(len(batch), self.world_size, self.rank)
        return batch[start:stop]

    def shard_split(self, split: Split) -> Split:
        return Split(self.shard(split.images), self.shard(split.labels))

    def rank_loss(self, loss: torch.Tensor, local: int, total: int) -> torch.Tensor:
        """The loss this rank backpropagates: its slice's mean ``loss`` of ``local`` of the
        batch's ``total`` examples, weighted so that DDP's average over ranks is the mean
        over the whole batch (and the mean over ranks of what is logged is that loss)."""
        if not self.distributed:
            return loss
        return loss * (local * self.world_size / total)

    def sum(self, *values: float) -> List[float]:
        """Python numbers summed over ranks (float64, on the training device for nccl)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the training step calls: ``model`` itself, or its DDP wrapper.

        Probes attach to ``model`` (not the wrapper), so their tags carry no ``module.``.
        DDP copies rank 0's parameters and buffers to every rank here, and rank 0's buffers
        again before every training forward (BatchNorm's running statistics).
        """
        if not self.distributed:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def seed_dropout(self, seed: int) -> None:
        """Give each rank other than 0 its own random stream (dropout masks), after the model
        is built: the same seed everywhere would drop the same units in every rank's slice."""
        if self.distributed and self.rank:
            torch.manual_seed(seed + 1_000_003 * self.rank)

    def sync_buffers(self, model: nn.Module) -> None:
        """Give every rank rank 0's buffers (running statistics) before evaluating or scanning.

        During training each rank updates BatchNorm's running statistics from its own slice;
        DDP overwrites them with rank 0's at the next forward. Doing the same now makes every
        rank evaluate the model rank 0 has, which is the model rank 0 logs and saves.
        """
        if self.distributed:
            for buffer in model.buffers():
                dist.broadcast(buffer.data, src=0)

    def check_batches(self, n: int, batch_size: int) -> None:
        """Refuse, in one sentence, batches some rank would get no example of."""
        if not self.distributed:
            return
        last = n % batch_size or batch_size
        if min(batch_size, last) < self.world_size:
            raise DataError(f"with {self.world_size} processes every batch needs at least {self.world_size} "
                            f"examples, but {n} training images in batches of {batch_size} leave a last batch "
                            f"of {last}; change --batch-size or --train-size")

    def gather_rows(self, local: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
        """Concatenate every rank's ``local`` rows in rank order; rank r holds ``counts[r]`` rows."""
        if not self.distributed:
            return local
        most = max(counts)
        padded = local.new_zeros((most, *local.shape[1:]))
        padded[: len(local)] = local
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:c] for p, c in zip(parts, counts)])


def setup(device: str) -> Context:
    """Join the process group torchrun describes (gloo on CPU, nccl on CUDA), or stay alone.

    On CUDA each rank uses ``cuda:LOCAL_RANK``. Ranks other than 0 send stdout to /dev/null:
    one progress bar and one set of epoch lines, from rank 0; errors still reach stderr.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    dev = torch.device(device)
    if world_size <= 1:
        return Context(0, 1, dev)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(dev)
    dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", device_id=dev if dev.type == "cuda" else None)
    ctx = Context(dist.get_rank(), dist.get_world_size(), dev)
    if not ctx.is_main:
        sys.stdout = open(os.devnull, "w")
    return ctx


def teardown(ctx: Context, finished: bool = True) -> None:
    """Leave the process group; after a finished run, only once every rank has finished.

    Without the barrier rank 1 left as soon as its share was done while rank 0 was still
    writing the summary and plots. Once, in CI, rank 1 then aborted at exit ("terminate
    called without an active exception", exit -6; not reproduced here in ~30 runs): closing
    gloo's connections under a peer that still holds them, or process-group objects freed
    during interpreter shutdown, are the likely causes, and both are avoided here. After a
    failure there is no barrier: the other ranks may never reach it, and torchrun stops them
    once this rank exits non-zero.
    """
    if not (ctx.distributed and dist.is_initialized()):
        return
    # The run's DDP wrapper holds the process group; models, probes and monitors refer to each
    # other in cycles that only the garbage collector frees. Free it now, while the interpreter
    # is whole, rather than during its shutdown after the group is gone.
    gc.collect()
    if finished:
        dist.barrier()
    dist.destroy_process_group()


def pair_scan_all_ranks(ctx: Context, model: nn.Module, images: torch.Tensor, loss_fn, norms_for: int = 0):
    """The pair scan of ``images``, each rank scanning its contiguous share, gathered on every rank.

    Every rank must hold the same model (call :meth:`Context.sync_buffers` first). The result
    is the one a single process scanning all ``images`` returns: flags, logits and output
    gradients for every image, per-layer norms for the first ``norms_for`` images. With
    fewer images than ranks every rank scans them all.
    """
    from probes.pair_scan import pair_scan

    n = len(images)
    if not ctx.distributed or n < ctx.world_size:
        return pair_scan(model, images, loss_fn, norms_for=norms_for)
    cuts = [bounds(n, ctx.world_size, r) for r in range(ctx.world_size)]
    rows = [b - a for a, b in cuts]
    norm_rows = [min(max(norms_for - a, 0), b - a) for a, b in cuts]
    start, stop = cuts[ctx.rank]
    local = pair_scan(model, images[start:stop], loss_fn, norms_for=norm_rows[ctx.rank])
    if not local.flags_from_output_grad:
        norm_rows = rows  # without the exact shortcut pair_scan computed every image's norms
    local.logits = ctx.gather_rows(local.logits, rows)
    local.output_grad = ctx.gather_rows(local.output_grad, rows)
    local.all_zero = ctx.gather_rows(local.all_zero.to(torch.uint8), rows).bool()
    if sum(norm_rows):
        # A rank with no norm rows has no layer names: take them from the model, as pair_scan does.
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        layers = sorted({n.rsplit(".", 1)[0] if "." in n else n for n in names})
        empty = local.logits.new_zeros((0, local.all_zero.shape[1]))
        local.layer_norms = {layer: ctx.gather_rows(local.layer_norms.get(layer, empty), norm_rows)
                             for layer in layers}
    return local
