"""The part of the request log that checks records, encodes row groups and publishes files.

Why a class of its own: it runs in two places — in the sink's writer process (the server's default,
`serving.requestlog.child`, so Arrow and Parquet work never holds the server's interpreter lock) and on
a thread of the sink's own process (`SinkConfig.writer="thread"`, for tools such as the simulator's
client log, where a second process buys nothing). Both count the same way: a record is `written` once
it is in a published file, `invalid` when it does not fit the schema, `write_error` when its file was
lost to an OS or Arrow error; `pending` records are checked but not yet in a published file.

Not thread-safe: one thread owns it.

Usage::

    w = LogWriter(Path("runs/requestlog"), prefix="requests", row_group_rows=1024, max_file_bytes=64 << 20,
                  max_file_age_s=300, compression="zstd")
    w.add(records)          # checks them, writes full row groups
    if w.due(): w.publish() # the remainder, then the open file under its final name
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from models.data.requestlog import REQUEST_LOG_SCHEMA, RequestLogError, RequestRecord, records_to_table
from serving.requestlog.files import RollingParquetWriter

log = logging.getLogger(__name__)


class LogWriter:
    """Buffers checked records, writes row groups of `row_group_rows`, publishes rotated files."""

    def __init__(self, folder: Path, *, prefix: str, row_group_rows: int, max_file_bytes: int,
                 max_file_age_s: float, compression: str, clock: Callable[[], float] = time.monotonic,
                 wall_clock_ms: Callable[[], int] | None = None) -> None:
        self.files = RollingParquetWriter(folder, prefix, REQUEST_LOG_SCHEMA, max_bytes=max_file_bytes,
                                          compression=compression)
        self.row_group_rows, self.max_file_age_s = row_group_rows, max_file_age_s
        self._clock = clock
        self._wall_ms = wall_clock_ms or (lambda: time.time_ns() // 1_000_000)
        self.buffer: list[RequestRecord] = []
        self.pending_since: float | None = None  # when the oldest unpublished record was checked
        self.invalid = self.write_error = self.written = self.n_files = 0
        self.published: list[str] = []  # names of the files published so far, oldest first

    @property
    def pending(self) -> int:
        return len(self.buffer) + self.files.rows_open

    def add(self, records: Iterable[RequestRecord]) -> None:
        """Checks each record into the buffer (counting the ones that do not fit), then writes full row groups."""
        for record in records:
            try:
                record.check()
                record.logged_at_ms = record.logged_at_ms or self._wall_ms()
            except (RequestLogError, TypeError, ValueError):
                self.invalid += 1
                continue
            if self.pending_since is None:
                self.pending_since = self._clock()
            self.buffer.append(record)
        self._write_buffer(final=False)

    def due(self) -> bool:
        """The oldest record not yet in a published file has waited max_file_age_s: publish now."""
        return self.pending_since is not None and self._clock() - self.pending_since >= self.max_file_age_s

    def publish(self) -> None:
        """Writes the remainder of the buffer and publishes the open file."""
        self._write_buffer(final=True)
        self._guarded(self.files.commit)
        self.pending_since = None

    def fail_pass(self) -> None:
        """After an unexpected error: what the buffer and the open file held is counted as lost."""
        log.exception("request log writer pass failed; its records are counted as write errors")
        self.write_error += len(self.buffer) + self.files.abort()
        self.buffer, self.pending_since = [], None

    def _write_buffer(self, *, final: bool) -> None:
        size = self.row_group_rows
        while self.buffer and (final or len(self.buffer) >= size):
            chunk = self.buffer[:size]
            try:
                table = records_to_table(chunk)
            except (TypeError, ValueError, OverflowError):
                self.invalid += len(chunk)
                del self.buffer[:len(chunk)]
                continue
            del self.buffer[:len(chunk)]  # only now: an unexpected failure above leaves them counted in the buffer
            self._guarded(lambda t=table: self.files.write(t), incoming_rows=table.num_rows)

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
            if not self.buffer and not self.files.rows_open:
                self.pending_since = None
