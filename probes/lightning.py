"""A Lightning ``Callback`` that attaches the probes to a ``LightningModule``.

Optional: importing this module needs Lightning (``pip install "gradient-probes[lightning]"``);
``import probes`` never does. Logs go through the trainer's TensorBoard logger (its
``SummaryWriter``), or to memory when the trainer has none.
"""
from __future__ import annotations

from typing import Any, Iterable, List, Optional, Union

try:
    from lightning.pytorch import Callback
    from lightning.pytorch.loggers import TensorBoardLogger
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        from pytorch_lightning import Callback
        from pytorch_lightning.loggers import TensorBoardLogger
    except ImportError:
        raise ImportError('ProbeCallback needs Lightning: pip install "gradient-probes[lightning]"') from None

import torch

from .api import make_probes
from .base import Probe
from .diagnosis import Finding
from .monitor import Monitor
from .schedule import Schedule
from .sinks import MemorySink, TensorBoardSink


class ProbeCallback(Callback):
    """Attach probes at ``fit`` start, step them after every training batch, detach at the end.

    One monitor step per training batch (``on_train_batch_end``); with
    ``accumulate_grad_batches > 1`` the gradient probes see the gradient accumulated so far.
    Only global rank 0 writes.
    """

    def __init__(self, probes: Union[str, Iterable[Union[str, Probe]]] = "all", every: Union[int, Schedule] = 50,
                 print_summary: bool = True) -> None:
        super().__init__()
        self.probe_choice = probes
        self.every = every
        self.print_summary = print_summary
        self.monitor: Optional[Monitor] = None

    def _sink(self, trainer: Any) -> Any:
        if not trainer.is_global_zero:
            return None
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return TensorBoardSink(writer=logger.experiment)
        return MemorySink()

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.monitor = Monitor(make_probes(self.probe_choice), sink=self._sink(trainer), every=self.every)
        self.monitor.attach(pl_module)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        self.monitor.step(loss if isinstance(loss, torch.Tensor) else None)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self._finish(trainer)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._finish(trainer)

    def _finish(self, trainer: Any) -> None:
        if self.monitor is None:
            return
        try:
            self.monitor.flush()
            if self.print_summary and trainer.is_global_zero:
                print(self.report())
        finally:
            self.monitor.detach()

    def findings(self) -> List[Finding]:
        """The diagnosis of what the probes measured (:func:`probes.diagnosis.diagnose`)."""
        return self.monitor.diagnose() if self.monitor is not None else []

    def report(self) -> str:
        """What the probes found, in words: the diagnosis, worst finding first."""
        return self.monitor.report() if self.monitor is not None else "probes: not attached yet"
