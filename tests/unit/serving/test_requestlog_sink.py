"""The request-log sink: never blocks, counts every record, rotates, samples deterministically."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from prometheus_client import CollectorRegistry

from models.data.requestlog import read_request_log, request_log_files
from protos.adrank.v1 import ranking_pb2
from serving.requestlog import WRITERS, RequestLogSink, SinkConfig, record_from_exchange, sampled
from serving.requestlog.files import remove_stale_temps
from tests.requestlog_fixtures import make_record


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("writer", WRITERS)
def test_overload_never_blocks_and_counts_every_record(tmp_path: Path, writer: str) -> None:
    """100k offers as fast as possible into a 64-record queue: most are dropped, all are counted."""
    pool = [make_record(f"r{i}", n=20) for i in range(1_000)]
    records = pool * 100  # 100k offers; building 100k distinct records would dominate the test's time
    registry = CollectorRegistry()
    sink = RequestLogSink(SinkConfig(folder=str(tmp_path), queue_size=64, row_group_rows=64, poll_interval_s=0.001,
                                     writer=writer), registry=registry)
    took = np.empty(len(records), dtype=np.int64)
    clock = time.perf_counter_ns
    for i, record in enumerate(records):
        t0 = clock()
        sink.offer(record)
        took[i] = clock() - t0
    stats = sink.close()
    p50, p99 = np.percentile(took, [50, 99]) / 1e3
    print(f"[{writer}] offer() under overload: p50 {p50:.2f} µs, p99 {p99:.2f} µs, max {took.max() / 1e3:.0f} µs; "
          f"written {stats.written}, dropped {stats.dropped_total}")
    assert stats.offered == 100_000
    assert stats.dropped["queue_full"] > 0
    assert stats.written + stats.dropped_total == stats.offered
    assert read_request_log(tmp_path).num_rows == stats.written
    assert _value(registry, "adrank_requestlog_records_written_total") == stats.written
    dropped = _value(registry, "adrank_requestlog_records_dropped_total", reason="queue_full")
    assert dropped == stats.dropped["queue_full"]
    assert _value(registry, "adrank_requestlog_files_total") == stats.files >= 1


@pytest.mark.parametrize("writer", WRITERS)
def test_rotates_by_size_and_every_file_is_complete(tmp_path: Path, writer: str) -> None:
    sink = RequestLogSink(SinkConfig(folder=str(tmp_path), queue_size=10_000, row_group_rows=50,
                                     max_file_bytes=20_000, poll_interval_s=0.005, writer=writer))
    for i in range(2_000):
        assert sink.offer(make_record(f"r{i}", n=8))
    stats = sink.close()
    files = request_log_files(tmp_path)
    assert stats.written == 2_000 and stats.files == len(files) > 3
    assert sum(pq.ParquetFile(f).metadata.num_rows for f in files) == 2_000
    assert read_request_log(tmp_path).column("request_id").to_pylist() == [f"r{i}" for i in range(2_000)]
    assert not [p for p in tmp_path.iterdir() if p.suffix != ".parquet"]  # no temp file left


def test_rotates_by_age_even_without_new_traffic(tmp_path: Path) -> None:
    now = [0.0]
    sink = RequestLogSink(SinkConfig(folder=str(tmp_path), max_file_age_s=30, poll_interval_s=0.005,
                                     writer="thread"), clock=lambda: now[0])  # the clock reaches the thread only
    sink.offer(make_record("a"))
    time.sleep(0.1)
    assert request_log_files(tmp_path) == [] and sink.stats().pending == 1  # buffered, not yet published
    now[0] = 31.0
    deadline = time.monotonic() + 5
    while sink.stats().written < 1 and time.monotonic() < deadline:  # counted just after the rename
        time.sleep(0.01)
    assert len(request_log_files(tmp_path)) == 1 and sink.stats().written == 1
    sink.offer(make_record("b"))
    assert sink.flush()  # flush publishes at once, whatever the age
    assert len(request_log_files(tmp_path)) == 2
    sink.close()


def test_the_writer_process_rotates_by_age_without_new_traffic(tmp_path: Path) -> None:
    sink = RequestLogSink(SinkConfig(folder=str(tmp_path), max_file_age_s=0.3, poll_interval_s=0.01))
    sink.offer(make_record("a"))
    deadline = time.monotonic() + 10
    while sink.stats().written < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(request_log_files(tmp_path)) == 1 and sink.stats().written == 1 and sink.stats().pending == 0
    sink.close()


def test_sampling_is_deterministic_by_request_id(tmp_path: Path) -> None:
    ids = [f"req-{i}" for i in range(20_000)]
    chosen = [i for i in ids if sampled(i, 0.1)]
    assert chosen == [i for i in ids if sampled(i, 0.1)]
    assert 0.09 < len(chosen) / len(ids) < 0.11
    assert set(chosen) <= {i for i in ids if sampled(i, 0.3)}  # a larger rate keeps every smaller sample
    assert all(sampled(i, 1.0) for i in ids[:10]) and not any(sampled(i, 0.0) for i in ids[:10])
    assert sampled("req-1", 0.5) is sampled("req-1", 0.5)
    stats = []
    for run in ("one", "two"):  # two sinks (two processes, or a later replay) log the same requests
        sink = RequestLogSink(SinkConfig(folder=str(tmp_path / run), sample_rate=0.1, queue_size=50_000))
        for i in ids[:5_000]:
            sink.offer(make_record(i, n=2))
        stats.append(sink.close())
    logged = [read_request_log(tmp_path / r).column("request_id").to_pylist() for r in ("one", "two")]
    assert logged[0] == logged[1] == [i for i in ids[:5_000] if sampled(i, 0.1)]
    assert stats[0].sampled_out == 5_000 - len(logged[0])
    assert stats[0].written + stats[0].sampled_out == stats[0].offered


@pytest.mark.parametrize("writer", WRITERS)
def test_bad_records_are_counted_not_raised(tmp_path: Path, writer: str) -> None:
    sink = RequestLogSink(SinkConfig(folder=str(tmp_path), poll_interval_s=0.005, sample_rate=0.9999, writer=writer))
    assert sink.offer(make_record("bad", bid=[1.0]))  # accepted: the writer checks it
    assert sink.offer(make_record(None))  # type: ignore[arg-type]  # no id to hash: never raises
    if writer == "process":  # (the thread writer would lose the whole row group: it fails in Arrow)
        assert sink.offer(make_record("odd", bid=["x"] * 4))  # cannot be framed: counted by the feeder
    assert sink.offer(make_record("good"))
    stats = sink.close()
    bad = 3 if writer == "process" else 2
    assert stats.dropped["invalid"] == bad and stats.written == 1 and stats.offered == bad + 1
    assert read_request_log(tmp_path).column("request_id").to_pylist() == ["good"]


def test_bad_records_and_write_errors_are_counted_not_raised(tmp_path: Path) -> None:
    sink = RequestLogSink(SinkConfig(folder=str(tmp_path), poll_interval_s=0.005, sample_rate=0.9999,
                                     writer="thread"))
    assert sink.offer(make_record("bad", bid=[1.0]))  # accepted: the writer thread checks it
    assert sink.offer(make_record(None))  # type: ignore[arg-type]  # no id to hash: never raises
    assert sink.offer(make_record("good"))
    assert sink.flush()

    def disk_full(table: object) -> None:
        raise OSError(28, "No space left on device")

    sink._writer.files.write = disk_full  # type: ignore[method-assign]
    sink.offer(make_record("lost"))
    stats = sink.close()
    assert stats.dropped["invalid"] == 2 and stats.dropped["write_error"] == 1 and stats.written == 1
    assert stats.written + stats.dropped_total == stats.offered == 4
    assert not sink.offer(make_record("late")) and sink.stats().dropped["closed"] == 1


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        SinkConfig(folder="x", sample_rate=1.5)
    with pytest.raises(ValueError, match="queue_size"):
        SinkConfig(folder="x", queue_size=0)
    with pytest.raises(ValueError, match="prefix"):
        SinkConfig(folder="x", prefix="../escape")
    with pytest.raises(ValueError, match="folder"):
        SinkConfig(folder="")
    with pytest.raises(ValueError, match="writer"):
        SinkConfig(folder="x", writer="fork")


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path: Path) -> None:
    from serving.requestlog.files import _host_tag

    dead = tmp_path / f".requests-20260101T000000Z-{_host_tag()}-999999999-000000.parquet.tmp"
    mine = tmp_path / ".other-20260101T000000Z-h-1-000000.parquet.tmp"
    dead.write_bytes(b"half")
    mine.write_bytes(b"half")
    assert remove_stale_temps(tmp_path, "requests") == [dead]
    assert mine.exists() and not dead.exists()


def test_record_from_exchange_scatters_scores_to_request_order() -> None:
    req = ranking_pb2.ScoreRequest(request_id="q1", user_id=4, request_time_ms=7 * 3_600_000 + 5)
    req.context.placement, req.context.device = "story", "web"
    req.user.segment = 2
    req.user.recent_categories.extend([3, 1])
    for ad in (50, 51, 52):
        req.candidates.add(ad_id=ad, advertiser_id=ad + 1, campaign_id=ad + 2, category=ad % 7, bid=2.0)
    resp = ranking_pb2.ScoreResponse(request_id="q1", request_time_ms=req.request_time_ms)
    resp.served_by.model_name, resp.served_by.model_version, resp.served_by.fm_version = "vm", 3, "fm-2"
    resp.flags.append(ranking_pb2.FLAG_USER_HISTORY_MISSING)
    resp.candidates.add(ad_id=52, request_index=2, p_ctr=0.5, p_cvr=0.25, expected_value=0.25, rank=1)
    resp.candidates.add(ad_id=50, request_index=0, p_ctr=0.1, p_cvr=0.5, expected_value=0.1, rank=2)
    record = record_from_exchange(req, resp, rollout_arm="b", snapshot_id="s1", stage_us={"infer": 9})
    record.check()
    assert (record.placement, record.device, record.hour, record.user_segment) == (2, 3, 7, 2)
    assert record.order.tolist() == [2, 0] and record.ad_id.tolist() == [50, 51, 52]
    np.testing.assert_array_equal(record.p_ctr, np.array([0.1, np.nan, 0.5], np.float32))
    assert record.flags == ["FLAG_USER_HISTORY_MISSING"] and record.dense_features is None
    assert (record.model_name, record.model_version, record.fm_version, record.rollout_arm) == ("vm", 3, "fm-2", "b")


def test_an_unexpected_writer_failure_is_counted_and_the_writer_goes_on(tmp_path: Path, monkeypatch) -> None:
    import serving.requestlog.writer as sink_module

    sink = RequestLogSink(SinkConfig(folder=str(tmp_path), poll_interval_s=0.005, writer="thread"))
    real = sink_module.records_to_batch
    monkeypatch.setattr(sink_module, "records_to_batch", lambda *a: (_ for _ in ()).throw(RuntimeError("bug")))
    sink.offer(make_record("lost"))
    assert sink.flush()
    monkeypatch.setattr(sink_module, "records_to_batch", real)
    sink.offer(make_record("kept"))
    stats = sink.close()
    assert stats.dropped["write_error"] == 1 and stats.written == 1 and stats.offered == 2
    assert read_request_log(tmp_path).column("request_id").to_pylist() == ["kept"]


def test_a_full_queue_drops_a_lazy_record_without_building_it(tmp_path: Path) -> None:
    """Under overload most records are dropped: offer_lazy must not pay for building them."""
    sink = RequestLogSink(SinkConfig(folder=str(tmp_path), queue_size=4, poll_interval_s=10))
    built = []

    def build(i: int):
        built.append(i)
        return make_record(f"r{i}", n=5)

    try:
        accepted = [sink.offer_lazy(f"r{i}", lambda i=i: build(i)) for i in range(20)]
    finally:
        stats = sink.close()
    assert accepted.count(True) <= 4 + 1  # the writer may have taken one batch off the queue meanwhile
    assert len(built) == accepted.count(True)  # a refused record was never built
    assert stats.offered == 20 and stats.written + stats.dropped_total == 20
    assert stats.dropped["queue_full"] == 20 - accepted.count(True)


def test_a_gated_thread_writer_waits_while_requests_run_and_never_waits_forever(tmp_path: Path) -> None:
    """With the server's busy signal the thread writer starts no slice while a request is in flight; while
    requests never stop it still writes, one slice per MAX_GATE_WAIT_S; close() does not wait for idle."""
    import os
    import threading

    from serving.requestlog.sink import MAX_GATE_WAIT_S, WRITER_NICE

    busy = {"now": True}
    registry = CollectorRegistry()
    sink = RequestLogSink(SinkConfig(folder=str(tmp_path), queue_size=10_000, row_group_rows=50, poll_interval_s=0.005,
                                     writer="thread"), registry=registry, busy=lambda: busy["now"])
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    for i in range(400):
        assert sink.offer(make_record(f"r{i}", n=8))
    deadline = time.monotonic() + 10
    while sink.stats().gate_timeouts < 1:  # busy throughout: the writer's waits end by their bound only
        assert time.monotonic() < deadline, "the gated writer never gave up waiting"
        time.sleep(0.005)
    # the writer thread yields the CPU to the serving threads: WRITER_NICE nicer than they are
    assert os.getpriority(os.PRIO_PROCESS, sink._thread.native_id) == min(19, base + WRITER_NICE)
    waits = sink.stats().gate_waits
    assert waits >= 1
    sink.flush()  # a flush asks for the log now: it does not wait for idle
    assert sink.stats().written == 400
    for i in range(400, 800):
        assert sink.offer(make_record(f"r{i}", n=8))
    deadline = time.monotonic() + 10
    while sink.stats().queued:  # never idle, yet the bounded wait still lets the writer take the queue
        assert time.monotonic() < deadline, "a server that is never idle kept its log queued"
        time.sleep(MAX_GATE_WAIT_S)
    busy["now"] = False
    stats = sink.close()
    assert stats.written == 800 and stats.dropped_total == 0
    assert stats.gate_timeouts >= 2 and stats.gate_waits >= stats.gate_timeouts
    assert _value(registry, "adrank_requestlog_writer_gate_waits_total") == stats.gate_waits
    assert read_request_log(tmp_path).column("request_id").to_pylist() == [f"r{i}" for i in range(800)]
