"""The public API: three lines in someone else's loop, and the optional Lightning callback."""
import pytest
import torch
from torch import nn

import probes


def loop(model, optimizer, monitor, steps=6, log_loss=True):
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y = torch.randn(16, 5, generator=gen), torch.randint(0, 3, (16,), generator=gen)
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if log_loss:
            monitor.log_loss(loss)
        optimizer.step()


def test_watch_with_optimizer_needs_no_call_in_the_loop():
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(inplace=True), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with probes.watch(model, every=2, optimizer=optimizer) as monitor:
        loop(model, optimizer, monitor)
    sink = monitor.sink
    assert monitor.global_step == 6
    assert [s for s, _ in sink.scalars["grad_norm/0.weight"]] == [0, 2, 4]
    assert [s for s, _ in sink.scalars["train/loss"]] == list(range(6))
    assert not optimizer._optimizer_step_post_hooks  # the hook is gone after the with-block
    assert all(not m._forward_hooks for m in model.modules())


def test_watch_chooses_probes_by_name_and_refuses_unknown_ones():
    model = nn.Linear(3, 2)
    monitor = probes.watch(model, probes=["gradients"])
    assert [p.name for p in monitor.probes] == ["gradients"]
    monitor.detach()
    with pytest.raises(ValueError, match="unknown probe 'gradient'"):
        probes.watch(model, probes=["gradient"])


def test_all_probes_named_in_the_registry_are_public():
    for cls in probes.PROBES.values():
        assert cls.__name__ in probes.__all__


def test_lightning_callback_with_a_real_trainer(mnist, tmp_path):
    pl = pytest.importorskip("lightning.pytorch", reason="Lightning not installed (pip install .[lightning])")
    from lightning.pytorch.loggers import TensorBoardLogger
    from torch.utils.data import DataLoader, TensorDataset

    from conftest import read_events
    from probes.lightning import ProbeCallback

    class Lit(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    x = mnist["train"].images[:256].unsqueeze(1).float() / 255
    loader = DataLoader(TensorDataset(x, mnist["train"].labels[:256]), batch_size=32)
    callback = ProbeCallback(every=3)
    logger = TensorBoardLogger(str(tmp_path), name="lit")
    trainer = pl.Trainer(max_steps=8, accelerator="cpu", logger=logger, callbacks=[callback],
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(Lit(), loader)
    events = read_events(tmp_path / "lit" / "version_0")
    assert [e.step for e in events.Scalars("grad_norm/net.1.weight")] == [0, 3, 6]
    assert "activations/net.2" in events.Tags()["histograms"]
    assert callback.monitor.model is None  # detached at the end of fit
    # the report is the diagnosis: MNIST's border pixels are 0 in all 256 images, so their
    # first-layer weights never moved, and that is not called a dead ReLU
    found = {f.id: f for f in callback.findings()}
    assert found["frozen-by-dead-input"].evidence["relation"] == "equal"
    assert "frozen-by-dead-input" in callback.report()
    assert all(f.severity == "info" for f in found.values() if f.id == "dead-relu")
