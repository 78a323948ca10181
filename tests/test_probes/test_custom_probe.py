"""A new probe written here alone, with nothing else in the project edited: the base gives it
hooks, tags, records, checkpoint state and its reduction over processes.

The probe is attached with ``probes.watch`` in one process and, under ``torchrun``, in two
(this file is the worker then): its records reach TensorBoard reduced as each one says.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import probes
from probes import stats
from probes.distributed import reduce_state

BATCHES = 3
ROWS = 8  # per batch; every rank takes half


class InputStats(probes.Probe):
    """Largest |input| (max over ranks), mean input (mean over ranks), the inputs' histogram
    (merged) and the number of examples seen (checkpointed, summed over ranks)."""

    name = "input_stats"
    state = {"examples": "sum"}

    def __init__(self) -> None:
        super().__init__()
        self.examples = 0

    def _on_attach(self, model: nn.Module) -> None:
        self._forward_pre_hook(model, self._on_input)

    def _on_input(self, module: nn.Module, args: tuple) -> None:
        x = args[0].detach()
        self.examples += x.shape[0]
        if self._logging:
            self._scalar("input_largest", "model", x.abs().amax(), reduce="max")
            self._scalar("input_mean", "model", x.mean(), reduce="mean")
            self._histogram("input", "model", stats.histogram(x))

    def summary(self) -> dict:
        return {"examples": self.examples}


def batches(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(ROWS, 5, generator=g) * (i + 1) for i in range(BATCHES)]


def train(xs, log_dir):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with probes.watch(model, log_dir, every=1, probes=[InputStats()], optimizer=opt) as monitor:
        for x in xs:
            opt.zero_grad()
            loss = model(x).pow(2).mean()
            loss.backward()
            opt.step()
        return monitor["input_stats"].summary()


def scalars(log_dir) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    out = {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    out["input/model"] = [e.histogram_value.num for e in acc.Histograms("input/model")]
    return out


def expected(xs) -> dict:
    return {"input_largest/model": [float(x.abs().max()) for x in xs],
            "input_mean/model": [float(x.mean()) for x in xs],
            "input/model": [float(x.numel()) for x in xs]}


def check(log_dir, xs) -> None:
    got = scalars(log_dir)
    for tag, values in expected(xs).items():
        assert got[tag] == pytest.approx(values, rel=1e-5), tag


def test_a_probe_defined_in_a_test_file_logs_through_watch(tmp_path):
    xs = batches()
    summary = train(xs, str(tmp_path / "run"))
    check(tmp_path / "run", xs)
    assert summary == {"examples": BATCHES * ROWS}


def test_its_declared_state_is_checkpointed():
    probe = InputStats()
    model = nn.Linear(5, 1)
    with probe.attach(model):
        model(torch.ones(4, 5))
        state = probe.state_dict()
    again = InputStats()
    with again.attach(model):
        again.load_state_dict(state)
        assert again.examples == 4


@pytest.mark.slow
def test_under_torchrun_its_records_are_reduced_as_it_declares(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           __file__, str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=1800)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    check(tmp_path / "run", batches())  # the whole batches: max, mean of equal halves, all counts
    assert (tmp_path / "examples.txt").read_text() == str(BATCHES * ROWS)


def worker(log_dir: str) -> None:
    """One rank: half of every batch; rank 0 writes TensorBoard."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mine = [x.chunk(2)[rank] for x in batches()]
    summary = train(mine, log_dir if rank == 0 else None)
    holder = InputStats()  # the run's end state, reduced over ranks as the probe declares
    holder.examples = summary["examples"]
    reduce_state([holder])
    if rank == 0:
        (Path(log_dir).parent / "examples.txt").write_text(str(holder.examples))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    worker(sys.argv[1])
