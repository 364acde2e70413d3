"""The writer core (`LogWriter`): records converted in bounded chunks with a hand-over between them,
row groups of the configured size from the converted batches, one bad record costing only itself."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

import serving.requestlog.writer as writer_module
from models.data.requestlog import read_request_log, request_log_files
from serving.requestlog import RequestLogSink, SinkConfig
from serving.requestlog.writer import CHUNK_ROWS, LogWriter
from tests.requestlog_fixtures import make_record


def _writer(folder: Path, steps: list[bool], row_group_rows: int = 300) -> LogWriter:
    return LogWriter(folder, prefix="requests", row_group_rows=row_group_rows, max_file_bytes=64 << 20,
                     max_file_age_s=300, compression="zstd", step=steps.append, wall_clock_ms=lambda: 77)


def test_records_are_converted_in_chunks_with_a_step_between_them(tmp_path: Path, monkeypatch) -> None:
    sizes: list[int] = []
    real = writer_module.records_to_batch

    def spy(records, logged_at_ms=0, pause=lambda: None):
        sizes.append(len(records))
        return real(records, logged_at_ms, pause)

    monkeypatch.setattr(writer_module, "records_to_batch", spy)
    steps: list[bool] = []
    w = _writer(tmp_path, steps)
    sizes.clear()  # the writer's warm-up record
    w.add([make_record(f"r{i}", n=3) for i in range(1000)])
    full = 1000 // CHUNK_ROWS * CHUNK_ROWS  # the rest waits for a full chunk (or a publish)
    assert sizes == [CHUNK_ROWS] * (1000 // CHUNK_ROWS) and len(w.incoming) == 1000 - full
    assert steps.count(False) >= 20 * len(sizes)  # the lock is handed over between the steps of a chunk
    assert steps.count(True) == full // 300  # full row groups of 300 written (Parquet: lock released inside)
    assert w.pending == 1000 and w.files.rows_open == full // 300 * 300 and w.batched_rows == full % 300
    w.publish()
    assert max(sizes) <= CHUNK_ROWS and sum(sizes) == 1000
    assert w.written == 1000 and w.invalid == 0 and w.pending == 0
    (path,) = request_log_files(tmp_path)
    meta = pq.read_metadata(path)
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [300, 300, 300, 100]
    table = read_request_log(tmp_path)
    assert table.column("request_id").to_pylist() == [f"r{i}" for i in range(1000)]
    assert set(table.column("logged_at_ms").to_pylist()) == {77}


def test_a_record_that_cannot_be_converted_costs_only_itself(tmp_path: Path) -> None:
    steps: list[bool] = []
    w = _writer(tmp_path, steps)
    records = [make_record(f"r{i}") for i in range(10)]
    records[4] = make_record("scalar", ad_id=5)  # no batch rule can judge a scalar: the chunk goes one by one
    records[7] = make_record("short", bid=[1.0])  # fails the check
    w.add(records)
    w.publish()
    assert (w.written, w.invalid) == (8, 2)
    assert read_request_log(tmp_path).column("request_id").to_pylist() == [
        f"r{i}" for i in range(10) if i not in (4, 7)]


def test_the_thread_writer_accounts_python_slices_and_parquet_steps_apart(tmp_path: Path) -> None:
    sink = RequestLogSink(SinkConfig(folder=str(tmp_path), row_group_rows=64, poll_interval_s=0.01, writer="thread"))
    for i in range(500):
        sink.offer(make_record(f"r{i}", n=20))
    stats = sink.close()
    assert stats.written == 500 and stats.dropped_total == 0
    assert stats.feeder_cpu_s > 0 and stats.writer_native_cpu_s > 0
    assert 0 < stats.feeder_max_slice_s <= stats.feeder_cpu_s
    assert 0 < stats.writer_native_max_s <= stats.writer_native_cpu_s
