"""The sink's writer process: frames round-trip exactly, and a writer that dies is counted and replaced.

Every record offered ends in exactly one counter (written, sampled out, or dropped by reason) even when
the writer process is SIGKILLed while it holds records in its open file: those are counted as
`writer_died`, its temp file is removed, and a new process takes over. After more deaths than
`MAX_RESTARTS` within the window, logging stops and later records are counted as `writer_down`.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from models.data.requestlog import read_request_log, records_to_table, request_log_files
from serving.requestlog import RequestLogSink, SinkConfig
from serving.requestlog import sink as sink_module
from serving.requestlog.frames import decode_record, encode_record, next_frame
from tests.requestlog_fixtures import make_record


def _wait(predicate, timeout_s: float = 20.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_frame_decodes_to_the_same_row() -> None:
    dense = np.arange(12, dtype=np.float32).reshape(4, 3)
    records = [make_record("a", dense_features=dense, p_ctr_no_history=np.full(4, 0.5, np.float32),
                           p_cvr_no_history=np.full(4, 0.25, np.float32), shadow_model_version=3,
                           p_ctr_shadow=np.full(4, 0.125, np.float32), p_cvr_shadow=np.full(4, 0.5, np.float32)),
               make_record("b", n=0, flags=[], stage_us={}), make_record("c", logged_at_ms=5)]
    decoded = []
    for r in records:
        kind, body, end = next_frame(encode_record(r, logged_at_ms=99), 0)
        assert kind == b"R"
        decoded.append(decode_record(body))
    for r in records:
        r.logged_at_ms = r.logged_at_ms or 99
    assert records_to_table(decoded).equals(records_to_table(records))
    assert next_frame(encode_record(records[0])[:-1], 0) is None  # incomplete
    with pytest.raises(ValueError, match="corrupt"):
        next_frame(b"X\xff\xff\xff\xff", 0)


def _sink(tmp_path: Path, registry: CollectorRegistry | None = None) -> RequestLogSink:
    return RequestLogSink(SinkConfig(folder=str(tmp_path), row_group_rows=10, max_file_age_s=3600,
                                     poll_interval_s=0.01), registry=registry)


def test_a_killed_writer_process_is_counted_and_replaced(tmp_path: Path, caplog) -> None:
    registry = CollectorRegistry()
    sink = _sink(tmp_path, registry)
    try:
        for i in range(30):
            sink.offer(make_record(f"a{i}"))
        assert sink.flush()
        assert sink.stats().written == 30
        for i in range(50):  # handed over, in the writer's open file, not yet published
            sink.offer(make_record(f"b{i}"))
        _wait(lambda: sink.stats().queued == 0 and sink.stats().pending == 50
              and any(p.name.endswith(".tmp") for p in tmp_path.iterdir()))
        first = sink.writer_pid
        with caplog.at_level(logging.ERROR, logger="serving.requestlog.sink"):
            os.kill(first, signal.SIGKILL)
            _wait(lambda: sink.writer_pid not in (None, first))
        assert "died" in caplog.text and "writer_died" in caplog.text
        assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # its temp file was removed
        for i in range(20):
            sink.offer(make_record(f"c{i}"))
    finally:
        stats = sink.close()
    assert stats.restarts == 1
    assert stats.dropped["writer_died"] == 50
    assert stats.written == 50 and stats.written + stats.dropped_total == stats.offered == 100
    ids = read_request_log(tmp_path).column("request_id").to_pylist()
    assert ids == [f"a{i}" for i in range(30)] + [f"c{i}" for i in range(20)]
    assert registry.get_sample_value("adrank_requestlog_records_dropped_total", {"reason": "writer_died"}) == 50
    assert registry.get_sample_value("adrank_requestlog_writer_restarts_total") == 1


def test_a_writer_that_keeps_dying_stops_logging_and_counts_the_rest(tmp_path: Path, caplog, monkeypatch) -> None:
    monkeypatch.setattr(sink_module, "MAX_RESTARTS", 1)
    sink = _sink(tmp_path)
    try:
        with caplog.at_level(logging.ERROR, logger="serving.requestlog.sink"):
            pid = sink.writer_pid
            os.kill(pid, signal.SIGKILL)
            _wait(lambda: sink.writer_pid not in (None, pid))
            os.kill(sink.writer_pid, signal.SIGKILL)
            _wait(lambda: sink.writer_down)
        assert sink.writer_pid is None and "logging stops" in caplog.text
        accepted = [sink.offer(make_record(f"d{i}")) for i in range(7)]
        _wait(lambda: sink.stats().queued == 0)
    finally:
        stats = sink.close()
    assert all(accepted)  # offer() itself never blocks or fails: the records are counted afterwards
    assert stats.dropped["writer_down"] == 7 and stats.written == 0 and stats.dropped_total == stats.offered == 7
    assert request_log_files(tmp_path) == []
