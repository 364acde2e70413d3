"""The writer contract: appends are buffered (encoded at once when the codec allows), publish compacts.

Nearline appends are applied at the next publish (not merged by readers): a publish builds a new
immutable snapshot = previous snapshot + appends since, with retention applied. Readers therefore stay
a pure function of one immutable snapshot (simple, checkable, identical across backends), and freshness
is bounded by the publish cadence; see docs/cache.md, "Freshness".
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod

import numpy as np

from embedding_cache.codecs import Codec, make_codec
from embedding_cache.config import RetentionConfig
from embedding_cache.errors import CacheError
from embedding_cache.reader import check_fm_version
from embedding_cache.snapshot_data import NO_EVENT_ID, EncodedRows, SnapshotData, build_snapshot

_Pending = EncodedRows | tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _check_codes(codes: np.ndarray, n: int, dim: int, field: str) -> np.ndarray:
    codes = np.ascontiguousarray(codes, np.float32)
    if codes.shape != (n, dim):
        raise ValueError(f"{field} must have shape ({n}, {dim}), got {codes.shape}")
    if not np.isfinite(codes).all():
        raise ValueError(f"{field} holds NaN or inf")
    return codes


def _check_ids(ids: np.ndarray, field: str) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise ValueError(f"{field} must be a 1-D integer array, got {arr.dtype} {arr.shape}")
    arr = arr.astype(np.int64)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{field} must be >= 0")
    return arr


class SnapshotWriter(ABC):
    """Buffers codes of one fm_version and publishes them as immutable snapshots.

    One writer per fm_version at a time (the embed job); readers may run anywhere.
    """

    def __init__(self, fm_version: str, dim: int, codec: str = "int8",
                 retention: RetentionConfig | None = None, **codec_params: int) -> None:
        self.fm_version = check_fm_version(fm_version)
        self.dim = int(dim)
        self.codec: Codec = make_codec(codec, self.dim, **codec_params)
        self.retention = retention or RetentionConfig()
        self._users: list[_Pending] = []
        self._ads: list[_Pending] = []

    # -- appends -------------------------------------------------------------------------------------
    def _encode_or_keep(self, ids: np.ndarray, ts: np.ndarray, codes: np.ndarray, event_ids: np.ndarray) -> _Pending:
        if self.codec.fitted:
            data, scales = self.codec.encode(codes)
            return EncodedRows(ids, ts, data, scales, event_ids)
        return (ids, ts, codes, event_ids)  # PQ before its codebooks exist: keep floats until publish trains them

    def append_user_codes(self, user_ids: np.ndarray, ts_ms: np.ndarray, codes: np.ndarray,
                          event_ids: np.ndarray | None = None) -> None:
        """Buffer user codes (n rows, any order) for the next publish.

        With `event_ids` (int64 [n], >= 0) a publish is idempotent: a row whose (user_id, ts, event_id) is
        already stored replaces it instead of adding a second copy. Rows without event ids are always added.
        """
        ids = _check_ids(user_ids, "user_ids")
        ts = _check_ids(ts_ms, "ts_ms")
        if ts.shape != ids.shape:
            raise ValueError(f"ts_ms shape {ts.shape} != user_ids shape {ids.shape}")
        if ts.size and ts.min() <= 0:
            raise ValueError("ts_ms must be > 0 (ms since epoch)")
        if event_ids is None:
            eids = np.full(len(ids), NO_EVENT_ID, np.int64)
        else:
            eids = _check_ids(event_ids, "event_ids")
            if eids.shape != ids.shape:
                raise ValueError(f"event_ids shape {eids.shape} != user_ids shape {ids.shape}")
        self._users.append(self._encode_or_keep(ids, ts, _check_codes(codes, len(ids), self.dim, "codes"), eids))

    def append_ad_codes(self, ad_ids: np.ndarray, codes: np.ndarray) -> None:
        """Buffer ad codes; a later append of the same ad replaces the earlier code at publish."""
        ids = _check_ids(ad_ids, "ad_ids")
        self._ads.append(self._encode_or_keep(ids, np.zeros(0, np.int64),
                                              _check_codes(codes, len(ids), self.dim, "codes"),
                                              np.zeros(0, np.int64)))

    @property
    def pending_rows(self) -> int:
        return sum(len(p[0] if isinstance(p, tuple) else p.ids) for p in self._users)

    # -- publish -------------------------------------------------------------------------------------
    def _adopt_codec(self, base: SnapshotData | None) -> None:
        if base is None:
            return
        if base.codec.name != self.codec.name or base.dim != self.dim:
            raise CacheError(
                f"fm_version {self.fm_version} is stored with codec={base.codec.name} dim={base.dim}; "
                f"this writer has codec={self.codec.name} dim={self.dim} (use a new fm_version to change it)")
        if not self.codec.fitted:
            self.codec = base.codec  # reuse trained PQ codebooks so carried-over bytes stay valid

    def _encode_pending(self, items: list[_Pending]) -> list[EncodedRows]:
        if not self.codec.fitted:
            raw = [p[2] for p in self._users + self._ads if isinstance(p, tuple)]
            self.codec.fit(np.concatenate(raw) if raw else np.zeros((1, self.dim), np.float32))
        out = []
        for p in items:
            if isinstance(p, tuple):
                data, scales = self.codec.encode(p[2])
                p = EncodedRows(p[0], p[1], data, scales, p[3])
            out.append(p)
        return out

    def current_coverage(self) -> dict:
        """What the published snapshot of this fm_version covers ({} when none): source, high_water_ms, rows."""
        base = self._load_base()
        return dict(base.coverage) if base is not None else {}

    def publish(self, now_ms: int | None = None, coverage: dict | None = None) -> str:
        """Publish base + appends as a new immutable snapshot and switch readers' pointer to it atomically.

        Args:
            now_ms: publish time for the age limit and the snapshot's created time (default: wall clock).
            coverage: fields recorded with the snapshot (e.g. {"source": "synthetic"}); the high-water mark
                and the row count are added here.

        Returns:
            The new snapshot id.
        """
        now = int(time.time() * 1000) if now_ms is None else int(now_ms)
        base = self._load_base()
        self._adopt_codec(base)
        users = self._encode_pending(self._users)
        ads = self._encode_pending(self._ads)
        snapshot_id = self._next_snapshot_id()
        data = build_snapshot(fm_version=self.fm_version, snapshot_id=snapshot_id, codec=self.codec,
                              created_ms=now, base=base, users=users, ads=ads, retention=self.retention,
                              coverage=coverage)
        self._store(data)
        self._users, self._ads = [], []
        return snapshot_id

    @abstractmethod
    def _load_base(self) -> SnapshotData | None:
        """The currently published snapshot of this fm_version, if any."""

    @abstractmethod
    def _next_snapshot_id(self) -> str:
        """A new, never used snapshot id (ordered)."""

    @abstractmethod
    def _store(self, data: SnapshotData) -> None:
        """Persist `data`, then switch the current pointer, then apply snapshot retention."""


def format_snapshot_id(seq: int) -> str:
    """Snapshot ids sort in publish order: s000001, s000002, ..."""
    return f"s{seq:06d}"
