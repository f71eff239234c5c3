"""MetricWriter: JSON lines and TensorBoard scalars, read back from the files."""

import glob
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def _event_records(path):
    """The serialized records of a TFRecord-framed event file (length, crc, data, crc)."""
    with open(path, "rb") as f:
        data = f.read()
    records, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        records.append(data[offset + 12:offset + 12 + length])
        offset += 12 + length + 4
    return records


def test_scalars_reach_jsonl_and_tensorboard(tmp_path):
    from tensorboardX.proto import event_pb2

    from msvision.train.metrics import MetricWriter, read_metrics

    writer = MetricWriter(str(tmp_path))
    writer.write(3, {"train/loss": 0.5, "lr": 1e-4, "bad": float("nan")})
    writer.write(7, {"train/loss": 0.25})
    writer.close()

    rows = read_metrics(str(tmp_path))
    assert [r["step"] for r in rows] == [3, 7] and rows[1]["train/loss"] == 0.25
    (events_file,) = glob.glob(str(tmp_path / "tensorboard" / "events.out.tfevents.*"))
    scalars = []
    for record in _event_records(events_file):
        event = event_pb2.Event.FromString(record)
        scalars += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
    # The non-finite value is in the JSON lines only (TensorBoard plots would break on it).
    assert [(step, tag) for step, tag, _ in sorted(scalars)] == [(3, "lr"), (3, "train/loss"), (7, "train/loss")]
    np.testing.assert_allclose([v for _, _, v in sorted(scalars)], [1e-4, 0.5, 0.25], rtol=1e-6)
    assert rows[0]["bad"] != rows[0]["bad"]  # NaN kept in the JSON lines


def test_tensorboard_logging_does_not_import_torch(tmp_path):
    """tensorboardX imports torch when installed (2.5 s per training start); the writer
    masks it, and torch stays importable afterwards."""
    code = textwrap.dedent(f"""
        import sys
        from msvision.train.metrics import MetricWriter
        writer = MetricWriter({str(tmp_path)!r})
        writer.write(1, {{"loss": 1.0}})
        writer.close()
        assert "torch" not in sys.modules, "tensorboardX imported torch"
        try:
            import torch
        except ImportError as error:
            assert "None in sys.modules" not in str(error), error
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
