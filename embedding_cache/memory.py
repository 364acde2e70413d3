"""In-process store: a writer and readers sharing snapshots in memory (tests, notebooks, modeling code).

It runs the same publish (compaction, retention, codecs) and the same vectorized lookups as the
embedded store, only without files, so it passes the same conformance suite.
"""

from __future__ import annotations

import threading

import numpy as np
from prometheus_client.registry import CollectorRegistry

from embedding_cache import csr
from embedding_cache.config import LookupLimits, RetentionConfig
from embedding_cache.errors import FmVersionMismatchError, SnapshotNotFoundError
from embedding_cache.reader import CacheReader, ViewInfo
from embedding_cache.snapshot_data import SnapshotData
from embedding_cache.writer import SnapshotWriter, format_snapshot_id


class CsrReader(CacheReader):
    """A reader over a SnapshotData reference; `refresh` swaps the reference (no pause, no lock on reads)."""

    backend = "memory"

    def __init__(self, data: SnapshotData, limits: LookupLimits, registry: CollectorRegistry | None) -> None:
        super().__init__(data.fm_version, limits, registry)
        self._data = data
        self.metrics.record_snapshot(data.snapshot_id, data.created_ms)

    def _swap(self, data: SnapshotData) -> bool:
        if data.fm_version != self.fm_version:
            raise FmVersionMismatchError(
                f"snapshot {data.snapshot_id} is {data.fm_version}, reader is {self.fm_version}")
        if data.snapshot_id == self._data.snapshot_id:
            return False
        self._data = data
        self.metrics.record_snapshot(data.snapshot_id, data.created_ms)
        return True

    @property
    def dim(self) -> int:
        return self._data.dim

    @property
    def snapshot_id(self) -> str:
        return self._data.snapshot_id

    @staticmethod
    def _info(data: SnapshotData) -> ViewInfo:
        return ViewInfo(data.snapshot_id, data.prior)

    def _users(self, user_ids: np.ndarray, t: np.ndarray, max_len: int) -> tuple[csr.RawHistory, ViewInfo]:
        data = self._data  # one reference per call: a concurrent refresh never mixes snapshots
        if len(user_ids) == 1:
            return csr.user_history_one(data, int(user_ids[0]), int(t[0]), max_len), self._info(data)
        return csr.user_history_batch(data, user_ids, t, max_len), self._info(data)

    def _ads(self, ad_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, ViewInfo]:
        data = self._data
        codes, hit = csr.ad_codes(data, ad_ids)
        return codes, hit, self._info(data)

    def _request(self, user_id: int, t: int, max_len: int, ad_ids: np.ndarray
                 ) -> tuple[csr.RawHistory, np.ndarray, np.ndarray, ViewInfo]:
        data = self._data
        raw = csr.user_history_one(data, user_id, t, max_len)
        codes, hit = csr.ad_codes(data, ad_ids)
        return raw, codes, hit, self._info(data)


class MemoryReader(CsrReader):
    """Reader bound to an InMemoryStore; refresh() follows the store's current snapshot."""

    def __init__(self, store: InMemoryStore, fm_version: str, limits: LookupLimits,
                 registry: CollectorRegistry | None) -> None:
        self._memory = store
        super().__init__(store.current(fm_version), limits, registry)

    def refresh(self) -> bool:
        return self._swap(self._memory.current(self.fm_version))


class InMemoryStore:
    """Holds published snapshots of several fm_versions in memory.

    Usage:
        store = InMemoryStore()
        w = store.writer("fm-v1", dim=32, codec="float32")
        w.append_user_codes(uids, ts, codes); w.publish()
        reader = store.reader("fm-v1")   # or open_reader("memory", store, fm_version="fm-v1")
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._current: dict[str, SnapshotData] = {}
        self._seq: dict[str, int] = {}

    def writer(self, fm_version: str, dim: int, codec: str = "int8",
               retention: RetentionConfig | None = None, **codec_params: int) -> MemoryWriter:
        return MemoryWriter(self, fm_version, dim, codec, retention, **codec_params)

    def reader(self, fm_version: str, limits: LookupLimits | None = None,
               registry: CollectorRegistry | None = None) -> MemoryReader:
        return MemoryReader(self, fm_version, limits or LookupLimits(), registry)

    def fm_versions(self) -> list[str]:
        return sorted(self._current)

    def current(self, fm_version: str) -> SnapshotData:
        data = self._current.get(fm_version)
        if data is None:
            if fm_version in self._seq:
                raise SnapshotNotFoundError(f"fm_version {fm_version} has no published snapshot")
            raise FmVersionMismatchError(
                f"store has no embeddings for fm_version {fm_version!r}; it has {self.fm_versions()}")
        return data

    def _next_id(self, fm_version: str) -> str:
        with self._lock:
            self._seq[fm_version] = self._seq.get(fm_version, 0) + 1
            return format_snapshot_id(self._seq[fm_version])

    def _publish(self, data: SnapshotData) -> None:
        self._current[data.fm_version] = data  # one dict assignment: readers see old or new, never a mix


class MemoryWriter(SnapshotWriter):
    """Writer of an InMemoryStore (see SnapshotWriter)."""

    def __init__(self, store: InMemoryStore, fm_version: str, dim: int, codec: str = "int8",
                 retention: RetentionConfig | None = None, **codec_params: int) -> None:
        super().__init__(fm_version, dim, codec, retention, **codec_params)
        self._memory = store

    def _load_base(self) -> SnapshotData | None:
        return self._memory._current.get(self.fm_version)

    def _next_snapshot_id(self) -> str:
        return self._memory._next_id(self.fm_version)

    def _store(self, data: SnapshotData) -> None:
        self._memory._publish(data)
