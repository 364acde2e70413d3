"""Parquet files that are complete or absent: row groups go to a temp file, published by one rename.

Why: readers (the label join, replay, monitors) list a folder while the server writes into it, and a
server can die at any instant. A Parquet file is readable only once its footer is written, so the
open file carries a temp name that never ends in `.parquet` (`.<name>.parquet.tmp`); `commit()`
closes it, fsyncs it, renames it to its final name in the same folder (atomic on POSIX) and fsyncs
the folder so the rename itself survives a power cut. A crash leaves at most one temp file per
writer, which `remove_stale_temps` deletes once its writer is gone.

Final names sort in write order: `<prefix>-<UTC open time>-<host>-<pid>-<seq>.parquet`.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

PREFIX_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_TEMP_PATTERN = re.compile(r"\.(?P<prefix>[A-Za-z0-9][A-Za-z0-9_-]*)-\d{8}T\d{6}Z-(?P<host>[A-Za-z0-9_-]+)"
                           r"-(?P<pid>\d+)-\d{6}\.parquet\.tmp")


def _host_tag() -> str:
    """The host name as it may appear in a file name (no dots, slashes or other separators)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:32] or "host"


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: Path, prefix: str) -> list[Path]:
    """Deletes temp files of `prefix` left by writers on this host whose process no longer runs."""
    removed = []
    host = _host_tag()
    for p in folder.glob(f".{prefix}-*.parquet.tmp"):
        m = _TEMP_PATTERN.fullmatch(p.name)
        if m and m["prefix"] == prefix and m["host"] == host and int(m["pid"]) != os.getpid() \
                and not _pid_alive(int(m["pid"])):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


class RollingParquetWriter:
    """Appends tables as row groups to the open file; publishes it once it passes `max_bytes` (or when
    the owner calls `commit`, e.g. on age: the sink's policy, since it also holds unwritten records).

    Not thread-safe: one writer thread owns it (the sink's).

    Usage::

        w = RollingParquetWriter(Path("runs/requestlog"), "requests", schema, max_bytes=64 << 20)
        w.write(table)   # may publish the file when it passes max_bytes
        w.commit()       # publishes whatever is open
    """

    def __init__(self, folder: Path, prefix: str, schema: pa.Schema, *, max_bytes: int,
                 compression: str = "zstd") -> None:
        if not PREFIX_PATTERN.fullmatch(prefix):
            raise ValueError(f"file prefix {prefix!r} must match {PREFIX_PATTERN.pattern} (no path separators)")
        self.folder = folder.resolve()
        self.prefix, self.schema = prefix, schema
        self.max_bytes, self.compression = max_bytes, compression
        self._writer: pq.ParquetWriter | None = None
        self._temp: Path | None = None
        self._final: Path | None = None
        self._seq = 0
        self.rows_open = 0  # rows in the open (unpublished) file

    def _open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = f"{self.prefix}-{stamp}-{_host_tag()}-{os.getpid()}-{self._seq:06d}.parquet"
        self._seq += 1
        final, temp = self.folder / name, self.folder / f".{name}.tmp"
        if final.parent != self.folder or temp.parent != self.folder:  # the prefix rule makes this impossible
            raise ValueError(f"log file {name} would leave {self.folder}")
        self._writer = pq.ParquetWriter(temp, self.schema, compression=self.compression)
        self._temp, self._final, self.rows_open = temp, final, 0

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    def open_bytes(self) -> int:
        return self._temp.stat().st_size if self._temp is not None and self._temp.exists() else 0

    def write(self, table: pa.Table) -> tuple[Path, int] | None:
        """Writes `table` as one row group. Returns (path, rows) when this publishes the file."""
        if self._writer is None:
            self._open()
        assert self._writer is not None
        self._writer.write_table(table)
        self.rows_open += table.num_rows
        if self.open_bytes() >= self.max_bytes:
            return self.commit()
        return None

    def commit(self) -> tuple[Path, int] | None:
        """Publishes the open file under its final name; returns (path, rows), or None if none is open."""
        if self._writer is None:
            return None
        writer, temp, final, rows = self._writer, self._temp, self._final, self.rows_open
        self._writer, self._temp, self._final, self.rows_open = None, None, None, 0
        assert temp is not None and final is not None
        writer.close()  # writes the footer: only now is the file readable
        fsync_path(temp)
        os.replace(temp, final)
        fsync_path(self.folder)
        return final, rows

    def abort(self) -> int:
        """Drops the open file (after a write error); returns the rows it held, now lost."""
        writer, temp, rows = self._writer, self._temp, self.rows_open
        self._writer, self._temp, self._final, self.rows_open = None, None, None, 0
        if writer is not None:
            with contextlib.suppress(Exception):  # the file is thrown away; its error is already counted
                writer.close()
        if temp is not None:
            temp.unlink(missing_ok=True)
        return rows
