"""TensorBoard's event-file writer made cheap enough for a 1 ms training step.

Without TensorFlow installed, TensorBoard's writer (which ``torch.utils.tensorboard`` uses)
pays twice for every record it puts in an event file, on its writer thread but holding the
interpreter and the disk while the training thread runs:

* two masked CRC-32C checksums computed in pure Python, one table lookup per byte (0.24 us
  a byte on our 2-core CPU);
* the file opened in append mode, written and closed again (its stand-in for TensorFlow's
  ``GFile``).

A logging step of the small benchmark MLP writes ~130 records (~13 KB: the interval's
losses, histograms, scalars). Measured there: the step after a logging step took 3.5 ms
instead of 1 ms, the whole difference being the writer thread's work.

So :func:`install_fast_checksum` swaps the one checksum function TensorBoard's record writer
calls for the same function computed by ``google-crc32c``'s C extension (a requirement of
this project), after checking both agree; and :func:`buffer_appends` gives one writer's event
file a buffer, written out in one append when the writer flushes (every ``flush_secs``, on
``flush()`` and ``close()``: what TensorFlow's own buffered file does), or when it holds
:data:`BUFFER_BYTES`. Neither changes a byte of any file. Without ``google-crc32c``, or
if TensorBoard's internals move, each leaves the writer as it was: slower, never wrong.

With TensorFlow installed (Keras users often have it), importing ``torch.utils.tensorboard``
imports TensorFlow too (its ``_embedding`` module touches ``tensorboard.compat.tf``): measured
here, +500 MB of resident memory (the benchmark's peak-RSS ratio read 1.82 instead of 0.99),
seconds of import and oneDNN's start-up lines on stderr, for a writer that needs none of it.
:func:`keep_tensorflow_out` makes TensorBoard take its own stand-in, as it does where
TensorFlow is not installed (the files are the same: TensorBoard's tests compare them).
"""
from __future__ import annotations

import struct
import sys
import threading
import types
from typing import Any, Callable, List, Optional

#: The constant TensorFlow's record format adds to the rotated checksum.
_MASK_DELTA = 0xA282EAD8
#: Bytes an event file's buffer holds before it is written out without waiting for a flush.
BUFFER_BYTES = 1 << 20
_installed: Optional[bool] = None


def keep_tensorflow_out(log_dir: Optional[str] = None) -> bool:
    """Before TensorBoard is first imported: have ``tensorboard.compat.tf`` resolve to
    TensorBoard's stand-in (``tensorflow_stub``) rather than TensorFlow; whether it will.

    TensorBoard chooses the stand-in where a module ``tensorboard.compat.notf`` exists (how it
    is built without TensorFlow); this registers an empty one. Left alone: TensorFlow already
    imported (nothing to save), or a ``log_dir`` with a scheme (``gs://``: only TensorFlow's
    file system reads Google Cloud Storage; the stand-in's knows local paths and ``s3://``).
    Process-wide: TensorBoard's ``compat.tf`` is then the stand-in for other users of it in
    this process too (``import tensorflow`` itself is unaffected)."""
    if "tensorflow" in sys.modules or (log_dir is not None and "://" in str(log_dir)):
        return False
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    return True


def _masked(crc: int) -> int:
    """TensorFlow's masking of a CRC-32C (a rotation and an offset, so that a checksum of data
    holding checksums does not degenerate)."""
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def compiled_masked_crc32c() -> Optional[Callable[[bytes], int]]:
    """TensorFlow's masked CRC-32C computed by ``google_crc32c``'s C extension, or None."""
    try:
        import google_crc32c
    except ImportError:
        return None
    if getattr(google_crc32c, "implementation", "c") != "c":  # its pure-Python fallback: no gain
        return None
    value = google_crc32c.value
    return lambda data: _masked(value(bytes(data)))


def install_fast_checksum() -> bool:
    """Make TensorBoard's record writer use the compiled checksum (once per process, for every
    writer in it); whether it does. Checked against TensorBoard's own function first."""
    global _installed
    if _installed is not None:
        return _installed
    _installed = False
    fast = compiled_masked_crc32c()
    if fast is None:
        return False
    try:
        from tensorboard.summary.writer import record_writer
    except ImportError:
        return False
    slow = getattr(record_writer, "masked_crc32c", None)
    if slow is None:
        return False
    samples = (struct.pack("<Q", 1234), bytes(range(256)) * 3, b"")
    if all(fast(s) == slow(s) for s in samples):
        record_writer.masked_crc32c = fast
        _installed = True
    return _installed


class BufferedEventFile:
    """An event file's writes kept in memory and appended in one piece when the writer flushes
    (or :data:`BUFFER_BYTES` are waiting), instead of one open-append-close per record.

    The writer thread writes and flushes it; ``SummaryWriter.flush()`` and ``close()`` flush
    it from the training thread: a lock keeps the two from interleaving."""

    def __init__(self, file: Any) -> None:
        self._file = file
        self._pending: List[bytes] = []
        self._bytes = 0
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            self._pending.append(data)
            self._bytes += len(data)
            if self._bytes >= BUFFER_BYTES:
                self._write_out()

    def _write_out(self) -> None:
        if self._pending:
            data, self._pending, self._bytes = b"".join(self._pending), [], 0
            self._file.write(data)

    def flush(self) -> None:
        with self._lock:
            self._write_out()
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._write_out()
            self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed


def buffer_appends(writer: Any) -> bool:
    """Give ``writer``'s (a ``SummaryWriter``'s) event file a :class:`BufferedEventFile`, if it
    writes through TensorBoard's own file stand-in; whether it did. A writer with TensorFlow's
    buffered file, or internals this does not know, is left alone."""
    try:
        record_writer = writer.file_writer.event_writer._async_writer._writer
        file = record_writer._writer
    except AttributeError:
        return False
    if isinstance(file, BufferedEventFile) or type(file).__module__ != "tensorboard.compat.tensorflow_stub.io.gfile":
        return False
    if not all(callable(getattr(file, name, None)) for name in ("write", "flush", "close")):
        return False
    record_writer._writer = BufferedEventFile(file)
    return True
