"""TensorBoard's writer made cheap (probes/event_files.py): the compiled checksum equals
TensorBoard's own byte for byte, the buffered event file loses nothing, and TensorBoard reads
what the sink wrote, checksums verified."""
import glob
import random
import threading

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
from tensorboard.summary.writer import record_writer

from probes import event_files
from probes.records import HostScalar
from probes.sinks import TensorBoardSink


def read_records(path):
    """Every record of an event file, through TensorBoard's compat reader, which checks both
    checksums of each record with its own pure-Python CRC (DataLossError on a mismatch)."""
    reader = pywrap_tensorflow.PyRecordReader_New(path)
    out = []
    while True:
        try:
            reader.GetNext()
        except Exception as exc:  # OutOfRangeError at the end of the file
            assert type(exc).__name__ == "OutOfRangeError", exc
            return out
        out.append(reader.record())


def test_compiled_checksum_equals_tensorboards_own_on_random_data():
    fast = event_files.compiled_masked_crc32c()
    assert fast is not None, "google-crc32c is a requirement: its C extension should import here"
    rng = random.Random(0)
    for n in [0, 1, 7, 8, 9, 63, 64, 65, 1000, 4099]:
        data = bytes(rng.randrange(256) for _ in range(n))
        assert fast(data) == pywrap_tensorflow.masked_crc32c(data), n


def test_sink_writes_buffered_with_the_compiled_checksum_and_tensorboard_reads_it(tmp_path):
    sink = TensorBoardSink(str(tmp_path))
    assert event_files.install_fast_checksum()
    assert record_writer.masked_crc32c is not pywrap_tensorflow.masked_crc32c
    file = sink.writer.file_writer.event_writer._async_writer._writer._writer
    assert isinstance(file, event_files.BufferedEventFile)
    sink.write([HostScalar("train/loss", s, 1.0 / (s + 1)) for s in range(50)])
    sink.flush()
    (path,) = glob.glob(str(tmp_path / "events.out.tfevents.*"))
    assert len(read_records(path)) >= 51  # on disk at a flush: the file version event, then 50 scalars
    sink.write([HostScalar("train/loss", s, 0.0) for s in range(50, 60)])
    sink.close()  # what is still buffered reaches the file on close
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(60))


class ListFile:
    """A file stand-in that keeps every write apart (to count the appends)."""

    def __init__(self):
        self.writes, self.closed = [], False

    def write(self, data):
        self.writes.append(data)

    def flush(self):
        pass

    def close(self):
        self.closed = True


def test_buffered_event_file_writes_once_per_flush_and_loses_nothing_under_two_threads(monkeypatch):
    file = ListFile()
    buffered = event_files.BufferedEventFile(file)
    for i in range(5):
        buffered.write(b"%d;" % i)
    assert file.writes == []
    buffered.flush()
    assert file.writes == [b"0;1;2;3;4;"]
    monkeypatch.setattr(event_files, "BUFFER_BYTES", 64)  # a full buffer is written without a flush
    buffered.write(b"x" * 70)
    assert file.writes[-1] == b"x" * 70
    # the writer thread writes while the training thread flushes: every record once, in order
    records = [b"%05d" % i for i in range(20000)]

    def writer():
        for r in records:
            buffered.write(r)

    thread = threading.Thread(target=writer)
    thread.start()
    while thread.is_alive():
        buffered.flush()
    buffered.close()
    assert b"".join(file.writes[2:]) == b"".join(records) and file.closed


@pytest.mark.parametrize("internals", ["tensorflow_file", "unknown"])
def test_buffer_appends_leaves_writers_it_does_not_know_alone(internals):
    class Writer:
        pass

    writer = Writer()
    if internals == "tensorflow_file":  # e.g. TensorFlow's own buffered GFile
        writer.file_writer = type("F", (), {})()
        writer.file_writer.event_writer = type("E", (), {})()
        writer.file_writer.event_writer._async_writer = type("A", (), {})()
        writer.file_writer.event_writer._async_writer._writer = type("R", (), {})()
        writer.file_writer.event_writer._async_writer._writer._writer = ListFile()
    assert not event_files.buffer_appends(writer)


FAKE_TENSORFLOW = "import sys\nsys.stderr.write('tensorflow imported\\n')\n"

SINK_IN_A_FRESH_PROCESS = """
import sys
from probes.records import HostScalar
from probes.sinks import TensorBoardSink
sink = TensorBoardSink(sys.argv[1])
sink.write([HostScalar("loss/train", 3, 0.5)])
sink.close()
print("tensorflow" in sys.modules)
"""


def test_the_sink_keeps_an_installed_tensorflow_out_of_the_process(tmp_path):
    """With TensorFlow importable, ``torch.utils.tensorboard`` would import it (+500 MB here):
    the sink makes TensorBoard take its own stand-in. A fake ``tensorflow`` package on the path
    says if it was imported; the events are written and read back all the same."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    fake = tmp_path / "site"
    (fake / "tensorflow").mkdir(parents=True)
    (fake / "tensorflow" / "__init__.py").write_text(FAKE_TENSORFLOW)
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake), str(repo)]))
    check = subprocess.run([sys.executable, "-c", "import tensorflow"], env=env, capture_output=True, text=True)
    assert "tensorflow imported" in check.stderr  # the fake is what an import finds
    logs = tmp_path / "logs"
    run = subprocess.run([sys.executable, "-c", SINK_IN_A_FRESH_PROCESS, str(logs)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "False" and "tensorflow imported" not in run.stderr
    acc = EventAccumulator(str(logs))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss/train")] == [(3, 0.5)]
    assert not event_files.keep_tensorflow_out("gs://bucket/run")  # only TensorFlow reads gs://
