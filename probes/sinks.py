"""Where records go: TensorBoard for people, memory for tests, nowhere for the other ranks.

Probes never import a sink; :class:`probes.monitor.Monitor` hands host records to one.
Every sink here does what :class:`Sink` says, and nothing else may be assumed of one.
TensorBoard is imported only when a :class:`TensorBoardSink` is made, so ``probes``
itself needs nothing but torch.
"""
from __future__ import annotations

import dataclasses
import re
import struct
from collections import defaultdict
from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple, Union, runtime_checkable

from . import event_files
from .layout import Category, Dashboard
from .records import HostHistogram, HostScalar

HostRecord = Union[HostScalar, HostHistogram]


@runtime_checkable
class Sink(Protocol):
    """What takes host records: a structural type, so any object with these five methods is a
    sink (a caller's own included) without subclassing anything here."""

    def write(self, records: Sequence[HostRecord]) -> None:
        """Take scalars and already-binned histograms, as :func:`probes.records.to_host` makes them."""

    def text(self, tag: str, text: str, step: int = 0) -> None:
        """Take one plain-words (markdown) text."""

    def image(self, tag: str, png: bytes, step: int = 0) -> None:
        """Take one PNG image, still encoded."""

    def flush(self) -> None:
        """Make what was taken so far visible (e.g. on disk)."""

    def close(self) -> None:
        """Flush and release what the sink owns; a sink handed in by a caller stays open."""


class NullSink:
    """Drops everything: the other ranks of a several-process run still measure and reduce,
    and only rank 0 writes."""

    def write(self, records: Sequence[HostRecord]) -> None:
        pass

    def text(self, tag: str, text: str, step: int = 0) -> None:
        pass

    def image(self, tag: str, png: bytes, step: int = 0) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class MemorySink:
    """Keeps everything in dictionaries keyed by tag: ``scalars[tag] == [(step, value), ...]``.

    ``histograms=False`` drops histograms: enough to plot scalars after a long run.
    """

    def __init__(self, histograms: bool = True) -> None:
        self.keep_histograms = histograms
        self.scalars: Dict[str, List[Tuple[int, float]]] = defaultdict(list)
        self.histograms: Dict[str, List[Tuple[int, HostHistogram]]] = defaultdict(list)
        self.texts: Dict[str, List[Tuple[int, str]]] = defaultdict(list)
        self.images: Dict[str, List[Tuple[int, bytes]]] = defaultdict(list)

    def write(self, records: Sequence[HostRecord]) -> None:
        for r in records:
            if isinstance(r, HostScalar):
                self.scalars[r.tag].append((r.step, r.value))
            elif self.keep_histograms:
                self.histograms[r.tag].append((r.step, r))

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self.texts[tag].append((step, text))

    def image(self, tag: str, png: bytes, step: int = 0) -> None:
        self.images[tag].append((step, png))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def png_size(png: bytes) -> Tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, so images are logged without decoding them."""
    if png[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG image")
    return struct.unpack(">II", png[16:24])


class TensorBoardSink:
    """Writes records with ``SummaryWriter``: scalars, raw histograms, text and PNG images.

    Histograms arrive already binned on the device, so they go through
    ``add_histogram_raw`` instead of ``add_histogram`` (which copies every tensor to the
    host as float64 and bins it with numpy).

    It also writes the run's custom-scalars layout (the "Custom Scalars" tab): the charts
    :meth:`pin` was given, then gradient flow, loss and the rest, built by a
    :class:`probes.layout.Dashboard` from the scalar tags it sees. The layout is written again
    whenever a new tag appears (a handful of times a run); TensorBoard shows the last one
    written. ``layout=False`` writes none.
    """

    def __init__(self, log_dir: Optional[str] = None, flush_secs: int = 2, writer: Any = None,
                 max_queue: int = 1000, purge_step: Optional[int] = None, layout: bool = True) -> None:
        """Write to ``log_dir``, or through an existing ``SummaryWriter`` (e.g. Lightning's
        ``TensorBoardLogger.experiment``), which is then left open on :meth:`close`.
        ``purge_step``: a resumed run's first step; TensorBoard then hides whatever an earlier
        writer logged at this step or later (steps after the checkpoint, which are redone).
        ``flush_secs``: how long written events may wait in memory before they reach the file
        (a writer of its own buffers them, see :mod:`probes.event_files`)."""
        self._owns_writer = writer is None
        if writer is None:  # before TensorBoard's first import: with TensorFlow installed it would load it
            event_files.keep_tensorflow_out(log_dir)
        event_files.install_fast_checksum()  # TensorBoard's CRC-32C in pure Python: ~3 ms a small model's log
        if writer is None:
            if log_dir is None:
                raise ValueError("TensorBoardSink needs a log_dir or a writer")
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:  # pragma: no cover - depends on the environment
                raise RuntimeError("TensorBoard logging needs the 'tensorboard' package: pip install tensorboard") from exc
            # A logging step writes ~100 events; with SummaryWriter's default queue of 10 the
            # training thread waits for the writer thread on each of them (measured: 14 ms a
            # logging step of the cnn). A deeper queue lets the writer drain during the next step.
            writer = SummaryWriter(log_dir=log_dir, flush_secs=flush_secs, max_queue=max_queue,
                                   purge_step=purge_step)
            event_files.buffer_appends(writer)  # one append a flush, not an open-append-close per event
        self.log_dir = writer.log_dir if log_dir is None else log_dir
        self.writer = writer
        self.dashboard: Optional[Dashboard] = Dashboard() if layout else None
        self._layout_step = 0 if purge_step is None else purge_step
        self._layout: list = []  # the categories last written

    def write(self, records: Sequence[HostRecord]) -> None:
        scalars = []
        for r in records:
            if isinstance(r, HostScalar):
                self.writer.add_scalar(r.tag, r.value, r.step)
                scalars.append(r)
            elif r.num > 0:
                self.writer.add_histogram_raw(
                    r.tag, r.min, r.max, r.num, r.sum, r.sum_squares, r.bucket_limits, r.bucket_counts, r.step
                )
        if self.dashboard is not None and self.dashboard.observe(r.tag for r in scalars):
            self._write_layout(max(r.step for r in scalars))

    def pin(self, *categories: Category) -> None:
        """Show ``categories`` first in the Custom Scalars tab (a question's own charts)."""
        if self.dashboard is not None:
            self.dashboard.pin(*categories)
            self._write_layout(self._layout_step)

    def _write_layout(self, step: int) -> None:
        """Write the whole layout as it is now. TensorBoard's custom-scalars plugin reads only the
        last one a run wrote, so each write replaces the previous; it is written at the latest step
        seen, which keeps it after every earlier layout, also in a resumed run's new event file."""
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.compat.proto.types_pb2 import DT_STRING
        from tensorboard.plugins.custom_scalar import layout_pb2, metadata

        categories = self.dashboard.categories()
        if categories == self._layout:
            return  # a new tag that shows nowhere new (e.g. one already pinned)
        self._layout = categories
        self._layout_step = step = max(step, self._layout_step)
        layout = layout_pb2.Layout(category=[
            layout_pb2.Category(title=c.title, closed=c.closed, chart=[
                layout_pb2.Chart(title=ch.title, multiline=layout_pb2.MultilineChartContent(
                    tag=[exact(t) for t in ch.tags]))
                for ch in c.charts])
            for c in categories])
        value = Summary.Value(tag=metadata.CONFIG_SUMMARY_TAG, metadata=metadata.create_summary_metadata())
        value.tensor.dtype = DT_STRING
        value.tensor.string_val.append(layout.SerializeToString())
        value.tensor.tensor_shape.SetInParent()
        self.writer._get_file_writer().add_summary(Summary(value=[value]), step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self.writer.add_text(tag, text, step)

    def image(self, tag: str, png: bytes, step: int = 0) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        width, height = png_size(png)
        image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
        self.writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        if self._owns_writer:
            self.writer.close()
        else:
            self.writer.flush()


def exact(tag: str) -> str:
    """A custom-scalars chart names its series by regular expressions: this one matches ``tag`` only."""
    return "^" + re.escape(tag) + "$"


class Tee:
    """Hands everything to several sinks, e.g. TensorBoard plus a MemorySink kept for plots."""

    def __init__(self, *sinks: Sink) -> None:
        self.sinks = sinks

    def write(self, records: Sequence[HostRecord]) -> None:
        for sink in self.sinks:
            sink.write(records)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        for sink in self.sinks:
            sink.text(tag, text, step)

    def image(self, tag: str, png: bytes, step: int = 0) -> None:
        for sink in self.sinks:
            sink.image(tag, png, step)

    def pin(self, *categories: Category) -> None:
        for sink in self.sinks:
            pin(sink, *categories)

    def flush(self) -> None:
        for sink in self.sinks:
            sink.flush()

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


class Prefixed:
    """Puts ``prefix`` in front of every tag, e.g. one run logging several models side by side.

    ``flush`` passes through; ``close`` does not: the wrapped sink belongs to the caller.
    """

    def __init__(self, sink: Sink, prefix: str) -> None:
        self.sink, self.prefix = sink, prefix

    def write(self, records: Sequence[HostRecord]) -> None:
        self.sink.write([dataclasses.replace(r, tag=self.prefix + r.tag) for r in records])

    def text(self, tag: str, text: str, step: int = 0) -> None:
        self.sink.text(self.prefix + tag, text, step)

    def image(self, tag: str, png: bytes, step: int = 0) -> None:
        self.sink.image(self.prefix + tag, png, step)

    def pin(self, *categories: Category) -> None:
        pin(self.sink, *(dataclasses.replace(c, charts=tuple(
            dataclasses.replace(ch, tags=tuple(self.prefix + t for t in ch.tags)) for ch in c.charts))
            for c in categories))

    def flush(self) -> None:
        self.sink.flush()

    def close(self) -> None:
        pass


def pin(sink: Sink, *categories: Category) -> None:
    """Show ``categories`` first on ``sink``'s dashboard, if it draws one (a sink without a
    ``pin`` method, e.g. :class:`MemorySink` or a caller's own, has none and is left alone)."""
    method = getattr(sink, "pin", None)
    if method is not None:
        method(*categories)
