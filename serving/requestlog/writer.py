"""The part of the request log that checks records, encodes row groups and publishes files.

Why a class of its own: it runs in two places — on a thread of the serving process
(`SinkConfig.writer="thread"`, the server's default) and in the sink's writer process
(`serving.requestlog.child`, `writer="process"`). Both count the same way: a record is `written` once
it is in a published file, `invalid` when it does not fit the schema, `write_error` when its file was
lost to an OS or Arrow error; `pending` records are added but not yet in a published file.

Why records become Arrow batches as they arrive, `CHUNK_ROWS` at a time: on the serving process's
thread, every stretch of Python holds the interpreter lock the event loop needs. The previous writer
kept records as objects until a row group was full and then built it in one call (Python lists per
column, a check per record): 1,024 records held the lock for tens of ms once per row group. Now a step
checks and converts at most `CHUNK_ROWS` records with array operations (`check_records`,
`records_to_batch`; under 1 ms), the `step` hook hands the lock over between steps, and a row group is
a zero-copy concatenation of those batches written by Arrow's C++ with the lock released.

Not thread-safe: one thread owns it.

Usage::

    w = LogWriter(Path("runs/requestlog"), prefix="requests", row_group_rows=1024, max_file_bytes=64 << 20,
                  max_file_age_s=300, compression="zstd")
    w.add(records)          # checks and converts them chunk by chunk, writes full row groups
    if w.due(): w.publish() # the remainder, then the open file under its final name
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models.data.requestlog import (
    REQUEST_LOG_SCHEMA,
    RequestLogError,
    RequestRecord,
    check_records,
    records_to_batch,
)
from serving.requestlog.files import RollingParquetWriter

log = logging.getLogger(__name__)

CHUNK_ROWS = 128
"""Records checked and converted to Arrow together. The check and the conversion are a few dozen array
operations over the chunk (tens of µs each for 128 records); after each one the writer calls its `step`
hook, which on a thread of the serving process gives the lock back, so the event loop waits behind at
most one of them."""


class LogWriter:
    """Checks records, keeps them as Arrow batches, writes row groups of `row_group_rows`, publishes rotated files.

    Records are checked and converted `CHUNK_ROWS` at a time as they arrive (`add`), so a row group is
    written from batches already in Arrow (a zero-copy concatenation); the Parquet encoding and the file
    writes run in Arrow's C++ with the interpreter lock released. `step(native)` is called after each
    step: `native` is True after a Parquet write or publish (lock released inside), False after a stretch
    of Python (a chunk checked and converted).
    """

    def __init__(self, folder: Path, *, prefix: str, row_group_rows: int, max_file_bytes: int,
                 max_file_age_s: float, compression: str, clock: Callable[[], float] = time.monotonic,
                 wall_clock_ms: Callable[[], int] | None = None,
                 step: Callable[[bool], None] | None = None) -> None:
        self.files = RollingParquetWriter(folder, prefix, REQUEST_LOG_SCHEMA, max_bytes=max_file_bytes,
                                          compression=compression)
        self.row_group_rows, self.max_file_age_s = row_group_rows, max_file_age_s
        self._clock = clock
        self._wall_ms = wall_clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._step = step or (lambda native: None)
        self._python_step = lambda: self._step(False)
        self.incoming: list[RequestRecord] = []  # added, not yet checked and converted
        self.batches: list[pa.RecordBatch] = []  # checked and converted, not yet in a row group
        self.batched_rows = 0
        self.pending_since: float | None = None  # when the oldest unpublished record arrived
        self.invalid = self.write_error = self.written = self.n_files = 0
        self.published: list[str] = []  # names of the files published so far, oldest first
        _warm_up(compression)

    @property
    def buffer(self) -> list[RequestRecord]:
        """Records added and not yet converted (kept for callers that inspect the writer)."""
        return self.incoming

    @property
    def pending(self) -> int:
        return len(self.incoming) + self.batched_rows + self.files.rows_open

    def add(self, records: Iterable[RequestRecord], *, final: bool = False) -> None:
        """Takes the records; checks and converts every full chunk of CHUNK_ROWS (or `row_group_rows`, when
        smaller) waiting, all of them when `final`, counting the ones that do not fit, and writes full row
        groups.

        Why wait for a full chunk: converting costs a fixed ~0.25 ms per call besides the few µs per record,
        so the 16 records of one overloaded pass would cost three times what they cost in a chunk of 128."""
        self.incoming.extend(records)
        if self.incoming and self.pending_since is None:
            self.pending_since = self._clock()
        chunk_rows = min(CHUNK_ROWS, self.row_group_rows)  # a full row group never waits for more records
        while len(self.incoming) >= chunk_rows or (final and self.incoming):
            chunk = self.incoming[:chunk_rows]
            batch = self._convert(chunk)  # an unexpected error leaves the chunk in `incoming`: counted as lost
            del self.incoming[:len(chunk)]
            if batch is not None and batch.num_rows:
                self.batches.append(batch)
                self.batched_rows += batch.num_rows
            self._step(False)
            if self.batched_rows >= self.row_group_rows:
                self._write_batches(final=False)
        if not self.pending:
            self.pending_since = None

    def _convert(self, chunk: list[RequestRecord]) -> pa.RecordBatch | None:
        """The valid records of `chunk` as one batch; invalid ones counted. Vectorised (`check_records`,
        `records_to_batch`); a chunk holding a value those cannot judge goes record by record, so one bad
        record costs only itself."""
        wall_ms = self._wall_ms()
        pause = self._python_step
        try:
            ok = check_records(chunk, pause)
            valid = chunk if ok.all() else [r for r, keep in zip(chunk, ok.tolist(), strict=True) if keep]
            batch = records_to_batch(valid, wall_ms, pause) if valid else None
        except (TypeError, ValueError, OverflowError, AttributeError, IndexError, KeyError, NotImplementedError):
            return self._convert_one_by_one(chunk, wall_ms)
        self.invalid += len(chunk) - len(valid)
        return batch

    def _convert_one_by_one(self, chunk: list[RequestRecord], wall_ms: int) -> pa.RecordBatch | None:
        batches = []
        for record in chunk:
            try:
                record.check()
                batches.append(records_to_batch([record], wall_ms))
            except (RequestLogError, TypeError, ValueError, OverflowError, AttributeError, IndexError, KeyError,
                    NotImplementedError):
                self.invalid += 1
        if not batches:
            return None
        return pa.Table.from_batches(batches, schema=REQUEST_LOG_SCHEMA).combine_chunks().to_batches()[0]

    def due(self) -> bool:
        """The oldest record not yet in a published file has waited max_file_age_s: publish now."""
        return self.pending_since is not None and self._clock() - self.pending_since >= self.max_file_age_s

    def publish(self) -> None:
        """Converts and writes what is held and publishes the open file."""
        if self.incoming:
            self.add([], final=True)
        self._write_batches(final=True)
        self._guarded(self.files.commit)
        self._step(True)
        self.pending_since = None

    def fail_pass(self) -> None:
        """After an unexpected error: what the buffers and the open file held is counted as lost."""
        log.exception("request log writer pass failed; its records are counted as write errors")
        self.write_error += len(self.incoming) + self.batched_rows + self.files.abort()
        self.incoming, self.batches, self.batched_rows, self.pending_since = [], [], 0, None

    def _write_batches(self, *, final: bool) -> None:
        """Writes row groups of exactly `row_group_rows` from the batches (the rest when `final`)."""
        size = self.row_group_rows
        while self.batched_rows and (final or self.batched_rows >= size):
            table = pa.Table.from_batches(self.batches, schema=REQUEST_LOG_SCHEMA)  # zero-copy
            group, rest = table.slice(0, size), table.slice(size)
            self.batches = rest.to_batches() if rest.num_rows else []
            self.batched_rows = rest.num_rows
            self._guarded(lambda t=group: self.files.write(t), incoming_rows=group.num_rows)
            self._step(True)

    def _guarded(self, step: Callable[[], tuple[Path, int] | None], incoming_rows: int = 0) -> None:
        """Runs a file step; counts a published file, or, on an OS/Arrow error, drops the open file and
        counts its rows (and the rows being written) as lost."""
        try:
            done = step()
        except Exception:  # disk full, permissions, Arrow I/O: the log must never stop scoring
            lost = self.files.rows_open + incoming_rows
            self.files.abort()
            self.write_error += lost
            return
        if done is not None:
            self.written += done[1]
            self.n_files += 1
            self.published.append(done[0].name)
            if not self.pending:
                self.pending_since = None


def _warm_up(compression: str) -> None:
    """Converts and encodes one record in memory, when the writer starts: the first Arrow conversion and the
    first Parquet write of a process initialise kernels and codecs (~11 ms measured), which would otherwise
    land on the first chunk a serving process logs."""
    record = RequestRecord(request_id="warm-up", request_time_ms=0, user_id=0, ad_id=np.zeros(1, np.int64),
                           advertiser_id=np.zeros(1, np.int64), campaign_id=np.zeros(1, np.int64),
                           category=np.zeros(1, np.int32), bid=np.zeros(1), p_ctr=np.zeros(1, np.float32),
                           p_cvr=np.zeros(1, np.float32), expected_value=np.zeros(1), order=np.zeros(1, np.int32),
                           stage_us={"infer": 1}, flags=["FLAG"])
    check_records([record])
    table = pa.Table.from_batches([records_to_batch([record])], schema=REQUEST_LOG_SCHEMA)
    pq.write_table(table, pa.BufferOutputStream(), compression=None if compression == "none" else compression)
