"""A bounded, asynchronous request-log sink that never blocks scoring.

Why this shape: the log must not cost the request path more than a few microseconds, and must never
make it wait — not on disk, not on Parquet encoding, not on a full queue. So `offer()` only takes a
lock, checks the queue's length and appends; when the queue is full the record is dropped and
counted. Feast's feature logger makes the same trade (bounded queue, drops when full); unlike it,
every outcome is counted here so that written + dropped + sampled_out == offered.

Why the writing can happen in another process (`SinkConfig.writer="process"`, the sink's default): measured
with `python -m loadtests.bench_requestlog` (docs/request-log.md), a writer *thread* that builds Arrow
columns and Parquet row groups in the server's process raised the server's own p99 by 11–19 % on an
idle machine while the caller's p99 stayed put: while the writer holds the interpreter lock the event
loop's next request waits, up to the 5 ms switch interval. In the same benchmark, half of that
thread's passes held the CPU for more than 100 µs between two lock releases (the longest 0.3–1 ms, and
29–107 ms in runs with a first Parquet write). So the server keeps only the cheapest part: a feeder
thread wakes every `poll_interval_s`, swaps the queue out and turns each record into one compact frame
(`serving.requestlog.frames`: raw array bytes, one struct, the strings with their lengths; 7.6 µs of
CPU for a 50-candidate record in a micro-benchmark, ~20–30 µs on the loaded benchmark host), which it
writes into a pipe. Each pipe write releases the lock, so the feeder holds it one record at a time:
in the benchmark 0.7–3.9 % of its stretches exceeded 100 µs and none 1 ms. The writer process
(`serving.requestlog.child`, niced) decodes the frames, checks them, builds the Arrow tables and writes
the rotated, atomically published Parquet files (`serving.requestlog.files`).

Why frame on the feeder and not in `offer()`: at full sampling every request would pay the framing on
the event loop (tens of µs against offer's 0.26 µs), while the feeder's one-record slices interleave
with requests and, under overload, are spent only on records the queue kept. Why not slice the
in-process Arrow work instead: the per-record Python work of building columns is of the same order as
framing, but Parquet encoding and file writes would still run in the server, and one record per
slice would lose the batching that makes Arrow worthwhile; a separate process removes the question.
The bench prints the feeder's lock-holding figures next to the in-process writer's (`--writer thread`),
a measure a busy shared machine does not blur the way it blurs p99.

What the measurement then said, and why the server's default is still the thread writer
(`ServerConfig.request_log_writer`): on the quiet 2-core development host (load 0.4–2.0, 7 runs of each
back to back, docs/request-log.md) the thread writer kept the server's own p99 within 10 % in every run
(on/off 0.88–1.09), while the writer process did not in 5 of 7 (1.04–1.49) — although its lock holds
were far shorter (0.4–1.3 % of stretches over 100 µs against half of the thread's passes). On two cores
a third busy process costs the server more CPU (and shared-core cache) than the lock slices save. The
writer process is the choice for hosts with cores to spare; that case has not been measured here.

The thread writer no longer holds the lock for a whole row group: `LogWriter` checks and converts
records `CHUNK_ROWS` at a time with array operations and calls `_writer_step` between two steps, which
accounts the stretch (Python steps as slices, Parquet steps apart as native time) and sleeps 50 µs so a
waiting thread takes the lock (`serving.requestlog.writer`).

Two more rules keep the thread writer out of the requests' way (measured, docs/request-log.md, 12
interleaved runs each: together they took the server's p99 under overload, logging on / off, from +16.5 %
[+9.8, +23.5] to +1.3 % [−3.4, +6.3]; the gate alone did not): its thread runs at `WRITER_NICE` (the OS
gives the event loop's thread and the host's other work the core first), and given the server's `busy`
signal (a request is in flight) it starts each slice of Python only in a gap between requests
(`_wait_idle`: polled every `GATE_POLL_S`, at most `MAX_GATE_WAIT_S`, then one slice anyway so a server
that is never idle still writes; both counted), with slices of `GATED_SLICE_S`. Flushes and the final
close do not wait for a gap.

The writer process can die (OOM killer, a bug in a native library). The sink notices at its next
pass (end of the process's report stream, or a broken pipe), counts the records it had handed over
and that are in no published file as dropped (`writer_died`; files the process published but had not
yet reported are read back and counted as written), removes its temp file, logs it and starts a new
process. After `MAX_RESTARTS` deaths within `RESTART_WINDOW_S` it stops logging with an error line, and
every later record is counted as dropped (`writer_down`); scoring goes on.

Counters are plain integers under the lock on the request path and copied into Prometheus by the
feeder thread (incrementing a Prometheus counter takes its own lock, which the request path need not
pay). `records_written` counts rows in *published* files only: rows in a file that is lost to a write
error are counted as dropped ("write_error").

Usage::

    sink = RequestLogSink(SinkConfig(folder="runs/requestlog", sample_rate=0.1), registry=metrics.registry)
    if sink.wants(request_id):
        sink.offer(RequestRecord(...))
    sink.close()
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from models.data.requestlog import RequestRecord
from serving.priority import lower_thread_priority
from serving.requestlog.files import PREFIX_PATTERN, _host_tag, remove_stale_temps
from serving.requestlog.frames import CLOSE, FLUSH, control_frame, encode_record
from serving.requestlog.writer import LogWriter

DROP_REASONS = ("queue_full", "invalid", "write_error", "closed", "writer_died", "writer_down")
WRITERS = ("process", "thread")
MAX_RESTARTS = 3
"""Deaths of the writer process tolerated within RESTART_WINDOW_S before logging stops."""
RESTART_WINDOW_S = 60.0
PIPE_BYTES = 1 << 20
"""Pipe to the writer process: the writer reads it once per poll interval, the frames wait there meanwhile."""
YIELD_S = 50e-6
"""The thread writer's pause when it hands the lock over (`RequestLogSink._writer_step`): long enough for a
thread waiting for the interpreter lock to take it."""
SLICE_TARGET_S = 250e-6
"""The thread writer hands the lock over at the first step boundary after this much CPU time: every
hand-over to a thread that is not on a CPU costs a wake-up, so one per step (~40 per chunk) cost more, on a
loaded 2-core host, than the steps themselves."""
GATED_SLICE_S = 100e-6
"""With a `busy` signal (the server's: a request is in flight), the hand-over target instead of
SLICE_TARGET_S: each slice then starts when no request runs, so its length is what a request arriving
during it can wait."""
WRITER_NICE = 19
"""How much nicer than the process the thread writer runs: measured (docs/request-log.md), the gate alone
left the server's p99 about 17 % up under overload on 2 cores, the gate with the writer at nice 19 about
1 %; a writer starved by a busy host fills its queue, and the overflow is dropped and counted."""
GATE_POLL_S = 200e-6
"""How often a gated writer looks again whether the requests in flight have finished."""
MAX_GATE_WAIT_S = 0.02
"""The longest a gated writer waits for an idle moment before it takes one slice anyway: a server never
idle still writes its log, one slice per 20 ms at least, and the bounded queue drops (counted) the rest."""
SLICE_BUCKETS = (25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 5e-3, 20e-3, 100e-3)
log = logging.getLogger(__name__)
_ROOT = Path(__file__).resolve().parents[2]


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
    """Records waiting for the feeder thread; when full, `offer` drops (and counts) instead of waiting.
    Must hold `poll_interval_s` of peak traffic (4096 ≈ 80 ms at 50k req/s)."""
    row_group_rows: int = 1024
    """Records per Parquet row group (fewer are written when a file is published early)."""
    max_file_bytes: int = 64 << 20
    """A file is published once it reaches this size (checked after each row group)."""
    max_file_age_s: float = 300.0
    """...or this age, so a quiet server's records still reach readers within about this long."""
    poll_interval_s: float = 0.05
    """How often the feeder (and the writer) wakes; `offer` never signals it (signalling costs the request path)."""
    prefix: str = "requests"
    """File name prefix: letters, digits, '_' and '-' only, so a name can never leave the folder."""
    compression: str = "zstd"
    writer: str = "process"
    """"process": Arrow/Parquet work in a writer process of its own (the server's choice: it never holds the
    server's interpreter lock); "thread": on a thread of this process (one process fewer, for tools)."""

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
        if self.writer not in WRITERS:
            raise ValueError(f"writer must be one of {'|'.join(WRITERS)}, got {self.writer!r}")


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
    pending: int = 0  # taken off the queue, not yet in a published file (in the pipe, buffered, in the open file)
    restarts: int = 0  # writer processes started after one died
    feeder_cpu_s: float = 0.0  # CPU time of this process's feeder/writer thread: interpreter-lock time it took
    feeder_max_slice_s: float = 0.0  # its longest stretch of CPU between two lock releases
    writer_native_cpu_s: float = 0.0  # thread writer: CPU time of its Parquet writes and publishes (lock released)
    writer_native_max_s: float = 0.0  # ...and the longest of them
    gate_waits: int = 0  # thread writer with a busy signal: slices that waited for requests in flight to end
    gate_timeouts: int = 0  # ...and of those, the ones that went ahead after MAX_GATE_WAIT_S

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
        self.restarts = Counter("adrank_requestlog_writer_restarts", "Writer processes started after one died",
                                registry=self.registry)
        self.feeder_cpu = Counter("adrank_requestlog_feeder_cpu_seconds", "CPU time of the serving process's "
                                  "request-log thread (time it held the interpreter lock)", registry=self.registry)
        self.feeder_max_slice = Gauge("adrank_requestlog_feeder_max_slice_seconds", "Longest CPU stretch of the "
                                      "request-log thread between two releases of the interpreter lock",
                                      registry=self.registry)
        self.feeder_slices = Histogram("adrank_requestlog_feeder_slice_seconds", "CPU stretches of the request-log "
                                       "thread between two releases of the interpreter lock (one record framed, "
                                       "or one pass of the in-process writer)", buckets=SLICE_BUCKETS,
                                       registry=self.registry)
        self.native_cpu = Counter("adrank_requestlog_writer_native_cpu_seconds", "CPU time of the in-process "
                                  "writer's Parquet writes and publishes (the interpreter lock released inside)",
                                  registry=self.registry)
        self.native_max = Gauge("adrank_requestlog_writer_native_max_seconds", "Longest CPU time of one Parquet "
                                "write or publish of the in-process writer", registry=self.registry)
        self.gate_waits = Counter("adrank_requestlog_writer_gate_waits", "In-process writer slices that waited for "
                                  "the requests in flight to finish before taking the interpreter lock",
                                  registry=self.registry)
        self.gate_timeouts = Counter("adrank_requestlog_writer_gate_timeouts", "...of which went ahead after the "
                                     "longest wait (the server was never idle meanwhile)", registry=self.registry)
        for reason in DROP_REASONS:
            self.dropped.labels(reason=reason)


class _WriterProcess:
    """One writer process and the thread that reads its reports (cumulative counters)."""

    def __init__(self, config: SinkConfig, folder: Path) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH"))
                                                           if p)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving.requestlog.child", "--folder", str(folder), "--prefix", config.prefix,
             "--row-group-rows", str(config.row_group_rows), "--max-file-bytes", str(config.max_file_bytes),
             "--max-file-age-s", str(config.max_file_age_s), "--poll-interval-s", str(config.poll_interval_s),
             "--compression", config.compression],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=env, cwd=str(_ROOT), close_fds=True)
        self.pid = self.proc.pid
        with contextlib.suppress(OSError, AttributeError):  # Linux: room for a few passes of frames
            fcntl.fcntl(self.proc.stdin.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)  # type: ignore
        self.sent = 0  # record frames fully written into the pipe
        self.status: dict = {}
        self.published: set[str] = set()
        self.ready = threading.Event()
        self.ended = threading.Event()  # the report stream ended: the process exited (or closed stdout)
        self.lock = threading.Lock()
        self.on_report: Callable[[dict], None] = lambda status: None
        self._reader = threading.Thread(target=self._read, name="requestlog-reports", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:  # a blocking read: releases the interpreter lock while it waits
                try:
                    report = json.loads(line)
                except ValueError:
                    continue
                if report.get("ready"):
                    self.ready.set()
                    continue
                with self.lock:
                    self.published.update(report.pop("published", []))
                    self.status = report
                self.on_report(report)
        finally:
            self.ended.set()
            self.ready.set()

    def send(self, data: bytes) -> None:
        """Writes all of `data` (a blocking pipe write; OSError once the process is gone)."""
        assert self.proc.stdin is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self.proc.stdin.fileno(), view):]

    @property
    def dead(self) -> bool:
        return self.ended.is_set() or self.proc.poll() is not None

    def accounted(self) -> int:
        s = self.status
        return s.get("written", 0) + s.get("invalid", 0) + s.get("write_error", 0)

    def finish(self, timeout_s: float) -> int | None:
        """Closes the input (the process publishes what it holds and exits); its exit code, None if it had to
        be killed after `timeout_s`."""
        with contextlib.suppress(OSError, ValueError):  # ValueError: the pipe was closed already
            self.send(control_frame(CLOSE))
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            code = None
        self.ended.wait(5)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code


class RequestLogSink:
    """Accepts records without blocking and writes them to rotated, atomically published Parquet files.

    Thread-safe: `offer` may be called from any thread (the asyncio loop, executor threads).
    """

    def __init__(self, config: SinkConfig, *, registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.monotonic, wall_clock_ms: Callable[[], int] | None = None,
                 busy: Callable[[], bool] | None = None) -> None:
        self.config = config
        # thread writer: before each slice, wait (up to MAX_GATE_WAIT_S) while busy() says requests run
        self._busy = busy
        self._slice_target = SLICE_TARGET_S if busy is None else GATED_SLICE_S
        self._gate_waits = 0
        self._gate_timeouts = 0
        self.folder = Path(config.folder).resolve()
        self.folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(self.folder, config.prefix)
        self.metrics = SinkMetrics(registry)
        self._wall_ms = wall_clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._lock = threading.Lock()
        self._queue: deque[RequestRecord] = deque()
        self._max = config.queue_size
        self._offered = self._sampled_out = self._queue_full = self._after_close = 0  # guarded by _lock
        self._closed = False
        # written by the feeder thread only
        self._invalid = self._writer_died = self._writer_down = self._restarts = 0
        self._cpu_s = self._max_slice_s = 0.0
        self._native_cpu_s = self._native_max_s = 0.0  # thread writer: Parquet steps (lock released inside)
        self._slice_start = 0.0  # thread writer: thread_time() when the current stretch began
        self._done: dict[str, int] = {"written": 0, "files": 0, "invalid": 0, "write_error": 0}  # dead processes
        self._deaths: deque[float] = deque()
        self._down = False
        self._exported: dict[str, float] = {}  # counter values already added to Prometheus
        # flush(): callers wait until the writer has finished a pass that started after their request
        self._flush_cond = threading.Condition()
        self._flush_asked = self._flush_done = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._writer: LogWriter | None = None
        self._child: _WriterProcess | None = None
        if config.writer == "thread":
            self._writer = LogWriter(self.folder, prefix=config.prefix, row_group_rows=config.row_group_rows,
                                     max_file_bytes=config.max_file_bytes, max_file_age_s=config.max_file_age_s,
                                     compression=config.compression, clock=clock, wall_clock_ms=self._wall_ms,
                                     step=self._writer_step)
            target = self._run_thread
        else:
            self._child = self._start_child()
            target = self._run_process
        self._thread = threading.Thread(target=target, name="requestlog-writer", daemon=True)
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
        beyond a short lock; never raises for a bad record (the writer checks and counts it)."""
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
        """Stops accepting work, writes and publishes what is queued, stops the writer; returns the stats."""
        with self._lock:
            self._closed = True
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout_s + 5)
        return self.stats()

    def __enter__(self) -> RequestLogSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def writer_pid(self) -> int | None:
        """The pid of the current writer process (None with the thread writer or once logging stopped)."""
        return self._child.pid if self._child is not None else None

    @property
    def writer_down(self) -> bool:
        """Logging stopped because the writer process kept dying: records are counted, not written."""
        return self._down

    def stats(self) -> SinkStats:
        with self._lock:
            offered, sampled_out, queued = self._offered, self._sampled_out, len(self._queue)
            queue_full, after_close = self._queue_full, self._after_close
        done = dict(self._done)
        pending = 0
        if self._writer is not None:
            w = self._writer
            done = {"written": w.written, "files": w.n_files, "invalid": w.invalid, "write_error": w.write_error}
            pending = w.pending
        child = self._child
        if child is not None:
            with child.lock:
                s = dict(child.status)
            for key in done:
                done[key] += s.get(key, 0)
            pending = child.sent - (s.get("written", 0) + s.get("invalid", 0) + s.get("write_error", 0))
        return SinkStats(offered=offered, sampled_out=sampled_out,
                         dropped={"queue_full": queue_full, "invalid": self._invalid + done["invalid"],
                                  "write_error": done["write_error"], "closed": after_close,
                                  "writer_died": self._writer_died, "writer_down": self._writer_down},
                         written=done["written"], files=done["files"], queued=queued, pending=pending,
                         restarts=self._restarts, feeder_cpu_s=self._cpu_s, feeder_max_slice_s=self._max_slice_s,
                         writer_native_cpu_s=self._native_cpu_s, writer_native_max_s=self._native_max_s,
                         gate_waits=self._gate_waits, gate_timeouts=self._gate_timeouts)

    # --- the in-process writer (writer="thread") ----------------------------------------------------

    def _run_thread(self) -> None:
        writer = self._writer
        assert writer is not None
        lower_thread_priority(WRITER_NICE)
        while True:
            self._wake.wait(self.config.poll_interval_s)
            self._wake.clear()
            self._wait_idle()
            self._slice_start = time.thread_time()
            stopping = self._stop.is_set()
            with self._flush_cond:
                ticket = self._flush_asked
            flushing = ticket > self._flush_done
            try:
                with self._lock:
                    batch, self._queue = self._queue, deque()
                writer.add(batch)
                if stopping or flushing or writer.due():
                    writer.publish()
            except Exception:  # noqa: BLE001 - a bug here must not stop the writer: count what it held, keep going
                writer.fail_pass()
            self._writer_step(False)
            self._sync_metrics()
            self._account_cpu(time.thread_time() - self._slice_start)
            if flushing:
                self._flushed(ticket)
            if stopping:
                return

    def _writer_step(self, native: bool) -> None:
        """Called by the in-process writer after each step (`LogWriter`): once the stretch since the last
        hand-over has used SLICE_TARGET_S of CPU (or after a Parquet step), accounts it and gives the
        interpreter lock back before the next step.

        A stretch of Python (`native=False`: array operations of a chunk's check and conversion) held the
        lock throughout: it is a slice (`feeder_slices`, `feeder_max_slice_s`). A Parquet write or publish (`native=True`) ran in
        Arrow's C++ with the lock released; its CPU time is counted apart (`writer_native_cpu_s`). The sleep
        is what makes the hand-over real: a bare release, reacquired at once, lets a waiting thread's wait
        restart instead of ending, so the event loop could still wait a whole switch interval (5 ms).
        """
        now = time.thread_time()
        if not native and now - self._slice_start < self._slice_target:
            return  # go on: the next step keeps this stretch short enough
        if native:
            self._native_cpu_s += now - self._slice_start
            self._native_max_s = max(self._native_max_s, now - self._slice_start)
        else:
            self._account_cpu(now - self._slice_start)
        time.sleep(YIELD_S)
        self._wait_idle()
        self._slice_start = time.thread_time()

    def _wait_idle(self) -> None:
        """With a `busy` signal: sleeps while requests are in flight, so the next slice of Python (which holds
        the interpreter lock) starts in a gap between requests instead of in the middle of one. Bounded by
        MAX_GATE_WAIT_S, and skipped when stopping or flushing (those wait for the log, not for traffic)."""
        busy = self._busy
        if busy is None or self._log_wanted_now() or not busy():
            return
        self._gate_waits += 1
        deadline = time.monotonic() + MAX_GATE_WAIT_S
        while busy() and not self._log_wanted_now():
            if time.monotonic() >= deadline:
                self._gate_timeouts += 1
                return
            time.sleep(GATE_POLL_S)

    def _log_wanted_now(self) -> bool:
        """A flush or the close is waiting for the log: the writer goes on without waiting for a gap."""
        return self._stop.is_set() or self._flush_asked > self._flush_done

    # --- the writer process (writer="process") -------------------------------------------------------

    def _start_child(self) -> _WriterProcess:
        child = _WriterProcess(self.config, self.folder)
        if not child.ready.wait(60) or child.dead:
            child.finish(1)
            raise RuntimeError(f"request log: the writer process did not start (exit code {child.proc.returncode})"
                               "; see its error output above")
        child.on_report = self._on_report
        return child

    def _on_report(self, status: dict) -> None:
        """Called on the report thread: wakes flush() callers once the writer has published their ticket."""
        if status.get("flushed", 0) > self._flush_done:
            self._flushed(status["flushed"])

    def _flushed(self, ticket: int) -> None:
        with self._flush_cond:
            self._flush_done = max(self._flush_done, ticket)
            self._flush_cond.notify_all()

    def _account_cpu(self, seconds: float) -> None:
        self._cpu_s += seconds
        self._max_slice_s = max(self._max_slice_s, seconds)
        self.metrics.feeder_slices.observe(seconds)

    def _run_process(self) -> None:
        while True:
            self._wake.wait(self.config.poll_interval_s)
            self._wake.clear()
            stopping = self._stop.is_set()
            with self._flush_cond:
                ticket = self._flush_asked
            try:
                self._feed(ticket if ticket > self._flush_done else 0)
            except Exception:  # noqa: BLE001 - a bug here must not stop logging
                log.exception("request log feeder pass failed")
            if stopping:
                self._stop_child()
                self._flushed(self._flush_asked)
                self._sync_metrics()
                return
            self._sync_metrics()

    def _feed(self, ticket: int) -> None:
        """One pass: replaces a dead writer, then frames the queued records into its pipe, one by one."""
        child = self._child
        if child is not None and child.dead:
            self._bury(child)
            child = self._child
        with self._lock:
            if not self._queue:
                batch: deque[RequestRecord] = deque()
            else:
                batch, self._queue = self._queue, deque()
        if child is None:  # logging stopped: the writer kept dying
            self._writer_down += len(batch)
            if ticket:
                self._flushed(ticket)
            return
        wall_ms = self._wall_ms()
        cpu = time.thread_time
        while batch:
            t0 = cpu()
            record = batch.popleft()
            try:
                frame = encode_record(record, wall_ms)
            except (TypeError, ValueError, OverflowError, AttributeError):  # cannot even be framed
                self._invalid += 1
                self._account_cpu(cpu() - t0)
                continue
            self._account_cpu(cpu() - t0)
            try:
                child.send(frame)  # releases the interpreter lock: the event loop runs between two records
            except (OSError, ValueError):  # the process died: this record and the rest of the batch never reach it
                self._writer_died += 1 + len(batch)
                batch.clear()
                break
            child.sent += 1
        if ticket:
            try:
                child.send(control_frame(FLUSH, ticket))
            except (OSError, ValueError):
                self._flushed(ticket)  # nothing more will be published by this process; counted when buried

    def _bury(self, child: _WriterProcess, *, restart: bool = True) -> None:
        """Counts what a dead writer process held, removes its temp file, and starts the next one (or stops)."""
        code = child.finish(1)
        self._child = None
        with child.lock:
            status, published = dict(child.status), set(child.published)
        late_rows = late_files = 0
        host = _host_tag()
        for path in self.folder.glob(f"{self.config.prefix}-*-{host}-{child.pid}-*.parquet"):
            if path.name not in published:  # published, but the process died before reporting it
                with contextlib.suppress(Exception):
                    import pyarrow.parquet as pq

                    late_rows += pq.read_metadata(path).num_rows
                    late_files += 1
        for key in self._done:
            self._done[key] += status.get(key, 0)
        self._done["written"] += late_rows
        self._done["files"] += late_files
        lost = max(0, child.sent - child.accounted() - late_rows)
        self._writer_died += lost
        remove_stale_temps(self.folder, self.config.prefix)
        if not restart:
            log.error("request log: the writer process %d ended with exit code %s while closing; %d records it "
                      "held are counted as dropped (reason writer_died)", child.pid, code, lost)
            return
        now = time.monotonic()
        self._deaths.append(now)
        while self._deaths and now - self._deaths[0] > RESTART_WINDOW_S:
            self._deaths.popleft()
        if len(self._deaths) > MAX_RESTARTS:
            self._down = True
            log.error("request log: the writer process died %d times within %.0f s (last exit code %s); "
                      "logging stops, and every later record is counted as dropped (reason writer_down)",
                      len(self._deaths), RESTART_WINDOW_S, code)
            return
        log.error("request log: the writer process %d died (exit code %s); %d records it held are counted as "
                  "dropped (reason writer_died); starting a new one", child.pid, code, lost)
        try:
            self._child = self._start_child()
            self._restarts += 1
        except (OSError, RuntimeError):
            self._down = True
            log.exception("request log: could not start a new writer process; logging stops (writer_down)")

    def _stop_child(self) -> None:
        child = self._child
        if child is None:
            return
        code = child.finish(max(1.0, self.config.poll_interval_s * 20 + 5))
        if code != 0:
            self._bury(child, restart=False)  # counts what it lost
            return
        with child.lock:
            status = dict(child.status)
        self._child = None
        for key in self._done:
            self._done[key] += status.get(key, 0)
        self._writer_died += max(0, child.sent - child.accounted())

    def _sync_metrics(self) -> None:
        """Adds what the counters gained since the last pass to the Prometheus series."""
        s = self.stats()
        m = self.metrics
        series = {"written": (s.written, m.written), "files": (s.files, m.files),
                  "sampled_out": (s.sampled_out, m.sampled_out), "restarts": (s.restarts, m.restarts),
                  "feeder_cpu": (s.feeder_cpu_s, m.feeder_cpu), "native_cpu": (s.writer_native_cpu_s, m.native_cpu),
                  "gate_waits": (s.gate_waits, m.gate_waits), "gate_timeouts": (s.gate_timeouts, m.gate_timeouts),
                  **{r: (s.dropped[r], m.dropped.labels(reason=r)) for r in DROP_REASONS}}
        for key, (value, counter) in series.items():
            delta = value - self._exported.get(key, 0)
            if delta > 0:
                counter.inc(delta)
                self._exported[key] = value
        m.queue_depth.set(s.queued)
        m.feeder_max_slice.set(s.feeder_max_slice_s)
        m.native_max.set(s.writer_native_max_s)
