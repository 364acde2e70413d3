"""Embedded backend: memory-mapped snapshot directories with an atomically switched CURRENT pointer.

    writer = EmbeddedWriter("/data/cache", fm_version="fm-v1", dim=32, codec="int8")
    writer.append_user_codes(uids, ts, codes); writer.append_ad_codes(ads, ad_codes)
    writer.publish()
    reader = open_reader("embedded", "/data/cache", fm_version="fm-v1")
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from pathlib import Path

from prometheus_client.registry import CollectorRegistry

from embedding_cache.config import LookupLimits, RetentionConfig
from embedding_cache.errors import CacheError, CorruptSnapshotError, FmVersionMismatchError, SnapshotNotFoundError
from embedding_cache.memory import CsrReader
from embedding_cache.snapshot_data import SnapshotData
from embedding_cache.snapshot_files import Verify, _fsync_dir, open_snapshot_dir, write_snapshot_dir
from embedding_cache.writer import SnapshotWriter, format_snapshot_id

CURRENT = "CURRENT"
log = logging.getLogger(__name__)
_SNAPSHOT_RE = re.compile(r"^s(\d{6,})$")


def version_dir(root: str | os.PathLike, fm_version: str) -> Path:
    return Path(root) / fm_version


def read_current(root: str | os.PathLike, fm_version: str) -> str:
    """The current snapshot id of an fm_version (typed errors when the version or pointer is absent)."""
    vdir = version_dir(root, fm_version)
    if not vdir.is_dir():
        known = sorted(p.name for p in Path(root).iterdir() if p.is_dir()) if Path(root).is_dir() else []
        raise FmVersionMismatchError(f"store {root} has no embeddings for fm_version {fm_version!r}; it has {known}")
    try:
        snapshot_id = (vdir / CURRENT).read_text().strip()
    except FileNotFoundError as exc:
        raise SnapshotNotFoundError(f"fm_version {fm_version} in {root} has no published snapshot") from exc
    return snapshot_id


def open_snapshot(root: str | os.PathLike, fm_version: str, snapshot_id: str | None = None,
                  verify: Verify = "full") -> SnapshotData:
    """Open (and verify) the current or a given snapshot of `fm_version`."""
    snapshot_id = snapshot_id or read_current(root, fm_version)
    directory = version_dir(root, fm_version) / "snapshots" / snapshot_id
    if not directory.is_dir():
        raise SnapshotNotFoundError(f"snapshot {snapshot_id} of {fm_version} not found in {root}")
    return open_snapshot_dir(directory, fm_version, verify)


def list_snapshots(root: str | os.PathLike, fm_version: str) -> list[str]:
    sdir = version_dir(root, fm_version) / "snapshots"
    return sorted(p.name for p in sdir.iterdir() if _SNAPSHOT_RE.match(p.name)) if sdir.is_dir() else []


def open_current_or_newest_valid(root: str | os.PathLike, fm_version: str, verify: Verify = "full") -> SnapshotData:
    """The snapshot CURRENT names; when that one fails verification (a damaged publish, a disk fault), the
    newest older snapshot that passes, logged as a warning, so a restarted server serves slightly older codes
    instead of failing every request. Raises the original error when no snapshot passes."""
    try:
        return open_snapshot(root, fm_version, None, verify)
    except CorruptSnapshotError as exc:
        current = read_current(root, fm_version)
        for older in reversed([s for s in list_snapshots(root, fm_version) if s < current]):
            try:
                data = open_snapshot(root, fm_version, older, verify)
            except CorruptSnapshotError:
                continue
            log.warning("embedding cache %s: CURRENT snapshot %s is corrupt (%s); serving %s, the newest valid one",
                        fm_version, current, exc, older)
            return data
        raise


class EmbeddedWriter(SnapshotWriter):
    """Publishes snapshots as directories under `<root>/<fm_version>/snapshots/` (see snapshot_files.py).

    Publish: write a temp dir, fsync, rename to its id, fsync the parent, then switch CURRENT by writing
    `CURRENT.tmp`, fsyncing and renaming it over CURRENT (rename is atomic on POSIX). Snapshots beyond
    `retention.keep_snapshots` are deleted afterwards; readers still mapping them keep their pages (POSIX
    unlink semantics), so a slow reader never faults.
    """

    def __init__(self, root_dir: str | os.PathLike, fm_version: str, dim: int, codec: str = "int8",
                 retention: RetentionConfig | None = None, **codec_params: int) -> None:
        super().__init__(fm_version, dim, codec, retention, **codec_params)
        self.root = Path(root_dir)
        self._snapshots = version_dir(self.root, fm_version) / "snapshots"
        self._snapshots.mkdir(parents=True, exist_ok=True)

    def _load_base(self) -> SnapshotData | None:
        try:
            return open_snapshot(self.root, self.fm_version)
        except SnapshotNotFoundError:
            return None

    def _next_snapshot_id(self) -> str:
        seqs = [int(_SNAPSHOT_RE.match(n).group(1)) for n in list_snapshots(self.root, self.fm_version)]
        return format_snapshot_id(max(seqs, default=0) + 1)

    def _store(self, data: SnapshotData) -> None:
        tmp = self._snapshots / f".tmp-{data.snapshot_id}-{uuid.uuid4().hex[:8]}"
        try:
            write_snapshot_dir(data, tmp)
            os.rename(tmp, self._snapshots / data.snapshot_id)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(self._snapshots)
        self._switch_current(data.snapshot_id)
        self._apply_retention(data.snapshot_id)

    def _switch_current(self, snapshot_id: str) -> None:
        vdir = self._snapshots.parent
        tmp = vdir / f"{CURRENT}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "w") as f:
            f.write(snapshot_id + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, vdir / CURRENT)
        _fsync_dir(vdir)

    def _apply_retention(self, current: str) -> None:
        old = [s for s in list_snapshots(self.root, self.fm_version) if s != current]
        for snapshot_id in old[: max(0, len(old) - (self.retention.keep_snapshots - 1))]:
            shutil.rmtree(self._snapshots / snapshot_id, ignore_errors=True)


class EmbeddedReader(CsrReader):
    """Reads memory-mapped snapshots; `refresh()` verifies the new snapshot before swapping to it."""

    backend = "embedded"

    def __init__(self, root_dir: str | os.PathLike, fm_version: str, *, snapshot_id: str | None = None,
                 verify: Verify = "full", limits: LookupLimits | None = None,
                 registry: CollectorRegistry | None = None) -> None:
        self.root = Path(root_dir)
        self._verify: Verify = verify
        self._pinned = snapshot_id is not None
        data = open_snapshot(self.root, fm_version, snapshot_id, verify) if self._pinned else \
            open_current_or_newest_valid(self.root, fm_version, verify)
        super().__init__(data, limits or LookupLimits(), registry)

    def refresh(self) -> bool:
        """Follow CURRENT; a corrupt or missing new snapshot raises and the old one keeps serving."""
        if self._pinned:
            return False
        try:
            current = read_current(self.root, self.fm_version)
            if current == self.snapshot_id:
                return False
            return self._swap(open_snapshot(self.root, self.fm_version, current, self._verify))
        except CacheError:
            self.metrics.record_refresh_failure()
            raise
