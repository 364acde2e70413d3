"""A bounded, asynchronous request-log sink that never blocks scoring.

Why this shape: the log must not cost the request path more than a few microseconds, and must never
make it wait — not on disk, not on Parquet encoding, not on a full queue. So `offer()` only takes a
lock, checks the queue's length and appends; when the queue is full the record is dropped and
counted. A background thread wakes every `poll_interval_s`, swaps the queue out, checks the records,
encodes them into row groups and writes rotated Parquet files that are complete or absent
(`serving.requestlog.files`). Feast's feature logger makes the same trade (bounded queue, drops when
full); unlike it, every outcome is counted here so that written + dropped + sampled_out == offered.

Counters are plain integers under the lock on the request path and copied into Prometheus by the
writer thread (incrementing a Prometheus counter takes its own lock, which the request path need not
pay). `records_written` counts rows in *published* files only: rows in a file that is lost to a write
error are counted as dropped ("write_error").

Usage::

    sink = RequestLogSink(SinkConfig(folder="runs/requestlog", sample_rate=0.1), registry=metrics.registry)
    if sink.wants(request_id):
        sink.offer(RequestRecord(...))
    sink.close()
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from models.data.requestlog import REQUEST_LOG_SCHEMA, RequestLogError, RequestRecord, records_to_table
from serving.requestlog.files import PREFIX_PATTERN, RollingParquetWriter, remove_stale_temps

DROP_REASONS = ("queue_full", "invalid", "write_error", "closed")
log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class SinkConfig:
    """Where and how the sink writes. Defaults suit one server process at production-like rates.

    Usage::

        SinkConfig(folder="runs/requestlog", sample_rate=0.05, max_file_age_s=60)
    """

    folder: str
    """The log folder; the sink writes only directly inside it (no sub-folders, no other paths)."""
    sample_rate: float = 1.0
    """Share of requests logged, in [0, 1]. Decided by a hash of the request id, so every process (and a
    later replay) agrees on which requests are in the log."""
    queue_size: int = 4096
    """Records waiting for the writer thread; when full, `offer` drops (and counts) instead of waiting.
    Must hold `poll_interval_s` of peak traffic (4096 ≈ 80 ms at 50k req/s)."""
    row_group_rows: int = 1024
    """Records per Parquet row group (fewer are written when a file is published early)."""
    max_file_bytes: int = 64 << 20
    """A file is published once it reaches this size (checked after each row group)."""
    max_file_age_s: float = 300.0
    """...or this age, so a quiet server's records still reach readers within about this long."""
    poll_interval_s: float = 0.05
    """How often the writer thread wakes; `offer` never signals it (signalling costs the request path)."""
    prefix: str = "requests"
    """File name prefix: letters, digits, '_' and '-' only, so a name can never leave the folder."""
    compression: str = "zstd"

    def __post_init__(self) -> None:
        if not self.folder:
            raise ValueError("folder must name the request log folder")
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in [0, 1], got {self.sample_rate}")
        if not 1 <= self.queue_size <= 10_000_000:
            raise ValueError(f"queue_size must be in [1, 1e7], got {self.queue_size}")
        if not 1 <= self.row_group_rows <= 1_000_000:
            raise ValueError(f"row_group_rows must be in [1, 1e6], got {self.row_group_rows}")
        if self.max_file_bytes < 1:
            raise ValueError(f"max_file_bytes must be >= 1, got {self.max_file_bytes}")
        if not self.max_file_age_s > 0:
            raise ValueError(f"max_file_age_s must be > 0, got {self.max_file_age_s}")
        if not 0.0 < self.poll_interval_s <= 10.0:
            raise ValueError(f"poll_interval_s must be in (0, 10], got {self.poll_interval_s}")
        if not PREFIX_PATTERN.fullmatch(self.prefix):
            raise ValueError(f"prefix {self.prefix!r} must match {PREFIX_PATTERN.pattern}")
        if self.compression not in ("zstd", "snappy", "gzip", "lz4", "none"):
            raise ValueError(f"compression must be zstd|snappy|gzip|lz4|none, got {self.compression!r}")


def sampled(request_id: str, rate: float) -> bool:
    """Whether `request_id` is in a `rate` sample: the first 8 bytes of its BLAKE2b hash, compared with
    rate · 2^64. Stable across processes and Python versions (the built-in hash() is salted per process)."""
    if rate >= 1.0:
        return True
    if rate <= 0.0:
        return False
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < int(rate * 18446744073709551616)


@dataclass(frozen=True)
class SinkStats:
    """A snapshot of the sink's counters: offered == queued + pending + written + sampled_out +
    dropped_total whenever no offer or write is in flight (after `flush()` or `close()`: queued and
    pending are 0)."""

    offered: int
    sampled_out: int
    dropped: dict[str, int] = field(default_factory=dict)
    written: int = 0
    files: int = 0
    queued: int = 0
    pending: int = 0  # checked records not yet in a published file (buffered or in the open file)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


class SinkMetrics:
    """The sink's Prometheus series, in the registry the server exposes."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.written = Counter("adrank_requestlog_records_written", "Request records in published log files",
                               registry=self.registry)
        self.dropped = Counter("adrank_requestlog_records_dropped", "Request records dropped, by reason", ["reason"],
                               registry=self.registry)
        self.sampled_out = Counter("adrank_requestlog_records_sampled_out", "Requests left out by the sample rate",
                                   registry=self.registry)
        self.files = Counter("adrank_requestlog_files", "Request log files published", registry=self.registry)
        self.queue_depth = Gauge("adrank_requestlog_queue_depth", "Records waiting for the writer thread",
                                 registry=self.registry)
        for reason in DROP_REASONS:
            self.dropped.labels(reason=reason)


class RequestLogSink:
    """Accepts records without blocking and writes them to rotated, atomically published Parquet files.

    Thread-safe: `offer` may be called from any thread (the asyncio loop, executor threads).
    """

    def __init__(self, config: SinkConfig, *, registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.monotonic, wall_clock_ms: Callable[[], int] | None = None) -> None:
        self.config = config
        self.folder = Path(config.folder).resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.folder, config.prefix)
        self.metrics = SinkMetrics(registry)
        self._files = RollingParquetWriter(self.folder, config.prefix, REQUEST_LOG_SCHEMA,
                                           max_bytes=config.max_file_bytes, compression=config.compression)
        self._clock = clock
        self._pending_since: float | None = None  # when the oldest unpublished record was checked
        self._wall_ms = wall_clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._lock = threading.Lock()
        self._queue: deque[RequestRecord] = deque()
        self._max = config.queue_size
        self._offered = self._sampled_out = self._queue_full = self._after_close = 0  # guarded by _lock
        self._closed = False
        # written by the writer thread only
        self._invalid = self._write_error = self._written = self._n_files = 0
        self._buffer: list[RequestRecord] = []
        self._exported: dict[str, int] = {}  # counter values already added to Prometheus
        # flush(): callers wait until the writer has finished a pass that started after their request
        self._flush_cond = threading.Condition()
        self._flush_asked = self._flush_done = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="requestlog-writer", daemon=True)
        self._thread.start()

    # --- request path -------------------------------------------------------------------------------

    def wants(self, request_id: str) -> bool:
        """Whether this request is in the sample: lets the caller skip building a record it would drop."""
        return sampled(request_id, self.config.sample_rate)

    def offer_lazy(self, request_id: str, build: Callable[[], RequestRecord]) -> bool:
        """`offer(build())` for a request in the sample; a request outside it is counted as sampled out
        without building its record (building is most of what logging costs the request path)."""
        if self.config.sample_rate >= 1.0 or sampled(request_id, self.config.sample_rate):
            with self._lock:  # a full queue drops the record anyway: do not pay for building it
                if not self._closed and len(self._queue) >= self._max:
                    self._offered += 1
                    self._queue_full += 1
                    return False
            return self.offer(build())
        with self._lock:
            self._offered += 1
            if self._closed:
                self._after_close += 1
            else:
                self._sampled_out += 1
        return False

    def offer(self, record: RequestRecord) -> bool:
        """Queues `record` for writing; False when it is sampled out or the queue is full. Never blocks
        beyond a short lock; never raises for a bad record (the writer thread checks and counts it)."""
        keep = True
        if self.config.sample_rate < 1.0:
            try:
                keep = sampled(record.request_id, self.config.sample_rate)
            except (AttributeError, TypeError):  # not a string id: queued, and counted invalid by the writer
                keep = True
        with self._lock:
            self._offered += 1
            if self._closed:
                self._after_close += 1
                return False
            if not keep:
                self._sampled_out += 1
                return False
            if len(self._queue) >= self._max:
                self._queue_full += 1
                return False
            self._queue.append(record)
            return True

    # --- control ------------------------------------------------------------------------------------

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Writes everything queued so far and publishes the open file; True when done within timeout_s."""
        with self._flush_cond:
            self._flush_asked += 1
            ticket = self._flush_asked
        self._wake.set()
        with self._flush_cond:
            return self._flush_cond.wait_for(lambda: self._flush_done >= ticket or not self._thread.is_alive(),
                                             timeout_s) and self._flush_done >= ticket

    def close(self, timeout_s: float = 10.0) -> SinkStats:
        """Stops accepting work, writes and publishes what is queued, stops the thread; returns the stats."""
        with self._lock:
            self._closed = True
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s)
        return self.stats()

    def __enter__(self) -> RequestLogSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> SinkStats:
        with self._lock:
            offered, sampled_out, queued = self._offered, self._sampled_out, len(self._queue)
            queue_full, after_close = self._queue_full, self._after_close
        return SinkStats(offered=offered, sampled_out=sampled_out,
                         dropped={"queue_full": queue_full, "invalid": self._invalid, "write_error": self._write_error,
                                  "closed": after_close},
                         written=self._written, files=self._n_files, queued=queued,
                         pending=len(self._buffer) + self._files.rows_open)

    # --- writer thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(self.config.poll_interval_s)
            self._wake.clear()
            stopping = self._stop.is_set()
            with self._flush_cond:
                ticket = self._flush_asked
            flushing = ticket > self._flush_done
            try:
                self._drain()
                if stopping or flushing or self._too_old():
                    self._write_buffer(final=True)
                    self._guarded(self._files.commit)
                    self._pending_since = None
            except Exception:  # a bug here must not stop the writer: count what it held, keep going
                log.exception("request log writer pass failed; its records are counted as write errors")
                self._write_error += len(self._buffer) + self._files.abort()
                self._buffer, self._pending_since = [], None
            self._sync_metrics()
            if flushing:
                with self._flush_cond:
                    self._flush_done = ticket
                    self._flush_cond.notify_all()
            if stopping:
                return

    def _too_old(self) -> bool:
        """The oldest record not yet in a published file has waited max_file_age_s: publish now."""
        return self._pending_since is not None and self._clock() - self._pending_since >= self.config.max_file_age_s

    def _drain(self) -> None:
        """Moves the queue into the buffer (checking each record), then writes full row groups."""
        with self._lock:
            if not self._queue:
                return
            batch, self._queue = self._queue, deque()
        for record in batch:
            try:
                record.check()
                record.logged_at_ms = record.logged_at_ms or self._wall_ms()
            except (RequestLogError, TypeError, ValueError):
                self._invalid += 1
                continue
            if self._pending_since is None:
                self._pending_since = self._clock()
            self._buffer.append(record)
        self._write_buffer(final=False)

    def _write_buffer(self, *, final: bool) -> None:
        """Writes full row groups (and, when `final`, the remainder) from the buffer."""
        size = self.config.row_group_rows
        while self._buffer and (final or len(self._buffer) >= size):
            chunk = self._buffer[:size]
            try:
                table = records_to_table(chunk)
            except (TypeError, ValueError, OverflowError):
                self._invalid += len(chunk)
                del self._buffer[:len(chunk)]
                continue
            del self._buffer[:len(chunk)]  # only now: an unexpected failure above leaves them counted in the buffer
            self._guarded(lambda t=table: self._files.write(t), incoming_rows=table.num_rows)

    def _guarded(self, step: Callable[[], tuple[Path, int] | None], incoming_rows: int = 0) -> None:
        """Runs a file step; counts a published file, or, on an OS/Arrow error, drops the open file and
        counts its rows (and the rows being written) as lost."""
        try:
            done = step()
        except Exception:  # disk full, permissions, Arrow I/O: the log must never stop scoring
            lost = self._files.rows_open + incoming_rows
            self._files.abort()
            self._write_error += lost
            return
        if done is not None:
            self._written += done[1]
            self._n_files += 1
            if not self._buffer and not self._files.rows_open:
                self._pending_since = None

    def _sync_metrics(self) -> None:
        """Adds what the counters gained since the last pass to the Prometheus series."""
        s = self.stats()
        m = self.metrics
        series = {"written": (s.written, m.written), "files": (s.files, m.files),
                  "sampled_out": (s.sampled_out, m.sampled_out),
                  **{r: (s.dropped[r], m.dropped.labels(reason=r)) for r in DROP_REASONS}}
        for key, (value, counter) in series.items():
            delta = value - self._exported.get(key, 0)
            if delta:
                counter.inc(delta)
                self._exported[key] = value
        m.queue_depth.set(s.queued)
