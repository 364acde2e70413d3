"""In-process store: a writer and readers sharing snapshots in memory (tests, notebooks, modeling code).

It runs the same publish (compaction, retention, codecs) and the same lookups (the fused kernel or the
vectorized numpy path) as the embedded store, only without files, so it passes the same conformance suite.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np
from prometheus_client.registry import CollectorRegistry

from embedding_cache import csr
from embedding_cache.batch import HistoryBatch
from embedding_cache.config import LookupLimits, RetentionConfig
from embedding_cache.errors import FmVersionMismatchError, SnapshotNotFoundError
from embedding_cache.kernels import RequestKernel, ServedHistory
from embedding_cache.metrics import STALENESS_BOUNDS_MS
from embedding_cache.reader import CacheReader, ViewInfo, raise_negative
from embedding_cache.snapshot_data import SnapshotData
from embedding_cache.writer import SnapshotWriter, format_snapshot_id


class _Served(NamedTuple):
    """Everything a lookup reads from one snapshot, swapped as ONE reference."""

    data: SnapshotData
    info: ViewInfo
    kernel: RequestKernel | None  # the fused lookup, None on the numpy path
    history: ServedHistory | None  # the served-history lookup (serving's entry), None where it does not apply


class CsrReader(CacheReader):
    """A reader over a SnapshotData reference; `refresh` swaps the reference (no pause, no lock on reads).

    `lookup` runs the fused numba kernel (kernels.py) when numba is available, else the numpy path of
    csr.py; both give bit-identical results. `lookup_path` says which one serves.
    """

    backend = "memory"

    def __init__(self, data: SnapshotData, limits: LookupLimits, registry: CollectorRegistry | None) -> None:
        super().__init__(data.fm_version, limits, registry)
        self._served = self._serve(data)
        self.metrics.record_snapshot(data.snapshot_id, data.created_ms)

    def _serve(self, data: SnapshotData) -> _Served:
        # Built before the swap (compiling the kernel on the first open), so no request waits for it.
        kernel = RequestKernel.for_snapshot(data)
        history = None if kernel is None else ServedHistory.for_kernel(
            kernel, data.prior, self.metrics.kernel_counts, STALENESS_BOUNDS_MS)
        return _Served(data, ViewInfo(data.snapshot_id, data.prior), kernel, history)

    def history_lookup(self, length: int, width: int, codec: str = ""):  # -> served_history.HistoryLookup
        """The served-path entry for a model reading `length` codes of `width` dims stored as `codec`
        ('' = any): see embedding_cache.served_history. None when this reader serves through `lookup` only
        (no numba, or a codec the served kernel does not decode)."""
        from embedding_cache.served_history import HistoryLookup

        return HistoryLookup.bind(self, length, width, codec)

    def _swap(self, data: SnapshotData) -> bool:
        if data.fm_version != self.fm_version:
            raise FmVersionMismatchError(
                f"snapshot {data.snapshot_id} is {data.fm_version}, reader is {self.fm_version}")
        if data.snapshot_id == self._served.data.snapshot_id:
            return False
        self._served = self._serve(data)
        self.metrics.record_snapshot(data.snapshot_id, data.created_ms)
        return True

    @property
    def dim(self) -> int:
        return self._served.data.dim

    @property
    def snapshot_id(self) -> str:
        return self._served.data.snapshot_id

    @property
    def coverage(self) -> dict:
        return dict(self._served.data.coverage)

    @property
    def codec_name(self) -> str:
        return self._served.data.codec.name

    @property
    def population_prior(self) -> np.ndarray:
        return self._served.data.prior

    @property
    def lookup_path(self) -> str:
        """Which lookup serves: "numba" (the fused kernel) or "numpy" (no numba, or ADRANK_CACHE_KERNEL=numpy)."""
        return "numpy" if self._served.kernel is None else "numba"

    def _users(self, user_ids: np.ndarray, t: np.ndarray, max_len: int) -> tuple[csr.RawHistory, ViewInfo]:
        served = self._served  # one reference per call: a concurrent refresh never mixes snapshots
        if len(user_ids) == 1:
            return csr.user_history_one(served.data, int(user_ids[0]), int(t[0]), max_len), served.info
        return csr.user_history_batch(served.data, user_ids, t, max_len), served.info

    def _ads(self, ad_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, ViewInfo]:
        served = self._served
        codes, hit = csr.ad_codes(served.data, ad_ids)
        return codes, hit, served.info

    def _request(self, user_id: int, t: int, max_len: int, ad_ids: np.ndarray
                 ) -> tuple[csr.RawHistory, np.ndarray, np.ndarray, ViewInfo]:
        served = self._served
        raw = csr.user_history_one(served.data, user_id, t, max_len)
        codes, hit = csr.ad_codes(served.data, ad_ids)
        return raw, codes, hit, served.info

    def lookup(self, user_id: int, t_ms: int, max_len: int, ad_ids: np.ndarray
               ) -> tuple[HistoryBatch, np.ndarray, np.ndarray]:
        """See CacheReader.lookup; the fused kernel checks ad ids for negatives while it searches them."""
        served = self._served
        if served.kernel is None:
            return super().lookup(user_id, t_ms, max_len, ad_ids)
        user_id, t_ms, max_len, ids = self._check_request(user_id, t_ms, max_len, ad_ids, check_negative=False)
        history, stamps, n_found, newest_ms, ads, hit, n_hit, first_negative = served.kernel.lookup(
            user_id, t_ms, max_len, ids)
        if first_negative >= 0:
            raise_negative(ids, "ad_ids")
        hb = self._finish_request(history, stamps, n_found, newest_ms, served.info, t_ms, len(ids), n_hit)
        return hb, ads, hit


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
