"""Where records go: TensorBoard for people, memory for tests.

Probes never import a sink; :class:`probes.monitor.Monitor` hands host records to one.
TensorBoard is imported only when a :class:`TensorBoardSink` is made, so ``probes``
itself needs nothing but torch.
"""
from __future__ import annotations

import struct
from collections import defaultdict
from typing import Dict, List, Tuple

from .records import HostHistogram, HostScalar


class MemorySink:
    """Keeps everything in dictionaries keyed by tag: ``scalars[tag] == [(step, value), ...]``."""

    def __init__(self) -> None:
        self.scalars: Dict[str, List[Tuple[int, float]]] = defaultdict(list)
        self.histograms: Dict[str, List[Tuple[int, HostHistogram]]] = defaultdict(list)
        self.texts: Dict[str, List[Tuple[int, str]]] = defaultdict(list)
        self.images: Dict[str, List[Tuple[int, bytes]]] = defaultdict(list)

    def write(self, records: list) -> None:
        for r in records:
            if isinstance(r, HostScalar):
                self.scalars[r.tag].append((r.step, r.value))
            else:
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
    """

    def __init__(self, log_dir: str, flush_secs: int = 30, max_queue: int = 1000) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise RuntimeError("TensorBoard logging needs the 'tensorboard' package: pip install tensorboard") from exc
        self.log_dir = log_dir
        # A logging step writes ~100 events; with SummaryWriter's default queue of 10 the
        # training thread waits for the writer thread on each of them (measured: 14 ms a
        # logging step of the cnn). A deeper queue lets the writer drain during the next step.
        self.writer = SummaryWriter(log_dir=log_dir, flush_secs=flush_secs, max_queue=max_queue)

    def write(self, records: list) -> None:
        for r in records:
            if isinstance(r, HostScalar):
                self.writer.add_scalar(r.tag, r.value, r.step)
            elif r.num > 0:
                self.writer.add_histogram_raw(
                    r.tag, r.min, r.max, r.num, r.sum, r.sum_squares, r.bucket_limits, r.bucket_counts, r.step
                )

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
        self.writer.close()
