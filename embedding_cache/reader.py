"""The reader contract every backend fulfils: validation, cold-start filling and metrics live here once.

Backends implement three primitives over ONE snapshot view each (`_users`, `_ads`, `_request`); this
class validates arguments (InvalidLookupError names the field and the limit), fills users without history
with the snapshot's population prior (flagged in `HistoryBatch.fallback`) and records metrics.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from typing import ClassVar, NamedTuple

import numpy as np
from prometheus_client.registry import CollectorRegistry

from embedding_cache.batch import HistoryBatch
from embedding_cache.config import LookupLimits
from embedding_cache.csr import RawHistory
from embedding_cache.errors import InvalidLookupError
from embedding_cache.metrics import CacheMetrics

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_INT64_MAX = 2**63 - 1
_INT64 = np.dtype(np.int64)
_INT_TYPES = (int, np.integer)


def check_fm_version(fm_version: str) -> str:
    """fm_version becomes a directory name and a Redis key part, so it must be a plain token."""
    if not isinstance(fm_version, str) or not _NAME_RE.match(fm_version):
        raise InvalidLookupError(f"fm_version must match {_NAME_RE.pattern}, got {fm_version!r}")
    return fm_version


class ViewInfo(NamedTuple):
    """What a lookup needs to know about the snapshot it read from."""

    snapshot_id: str
    prior: np.ndarray


def _as_ids(values: object, field: str, check_negative: bool = True) -> np.ndarray:
    """int64 [n] from any 1-D integer input; `check_negative=False` leaves that check to the caller."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise InvalidLookupError(f"{field} must be a 1-D array, got shape {arr.shape}")
    if arr.dtype != _INT64:
        if arr.dtype.kind not in "iu" and arr.size:
            raise InvalidLookupError(f"{field} must be integers, got dtype {arr.dtype}")
        if arr.dtype == np.uint64 and arr.size and int(arr.max()) > _INT64_MAX:
            raise InvalidLookupError(f"{field} must be < 2**63, got {int(arr.max())}")
        arr = arr.astype(np.int64)
    if check_negative and arr.size and int(arr.min()) < 0:
        raise_negative(arr, field)
    return arr


def raise_negative(arr: np.ndarray, field: str) -> None:
    """The error for ids below zero (shared by the numpy checks and the fused kernel's report)."""
    raise InvalidLookupError(f"{field} must be >= 0, got {int(arr.min())}")


def _check_scalar_id(value: object, field: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, _INT_TYPES) or not minimum <= value <= _INT64_MAX:
        what = "an int >= 0" if minimum == 0 else "an int > 0 (ms since epoch)"
        raise InvalidLookupError(f"{field} must be {what} and < 2**63, got {value!r}")
    return int(value)


class CacheReader(ABC):
    """Point-in-time reader of one fm_version. Thread-safe: each call reads one snapshot reference.

    Usage:
        reader = open_reader("embedded", "/data/cache", fm_version="fm-v1")
        hb, ad_codes, ad_hit = reader.lookup(user_id=42, t_ms=1_700_000_000_000, max_len=64, ad_ids=ads)
    """

    backend: ClassVar[str]

    def __init__(self, fm_version: str, limits: LookupLimits, registry: CollectorRegistry | None) -> None:
        self._fm_version = check_fm_version(fm_version)
        self.limits = limits
        self.metrics = CacheMetrics(self.backend, fm_version, registry)

    # -- backend primitives ----------------------------------------------------------------------------
    @property
    @abstractmethod
    def dim(self) -> int:
        """Width of the codes."""

    @property
    @abstractmethod
    def snapshot_id(self) -> str:
        """Snapshot currently served."""

    @property
    def codec_name(self) -> str:
        """The codec the served snapshot stores codes with (float32, float16, int8, int4, pq)."""
        raise NotImplementedError

    @property
    def population_prior(self) -> np.ndarray:
        """The served snapshot's cold-start code: what a user without history gets (float32 [dim])."""
        raise NotImplementedError

    @property
    def coverage(self) -> dict:
        """What the served snapshot covers: source, event-time high-water mark, rows ({} if not recorded)."""
        return {}

    @abstractmethod
    def refresh(self) -> bool:
        """Switch to the newest published snapshot if there is one; True when it switched.

        A snapshot that fails verification raises CorruptSnapshotError and the reader keeps serving the
        one it had (the switch is a single reference assignment, so readers never pause).
        """

    @abstractmethod
    def _users(self, user_ids: np.ndarray, t: np.ndarray, max_len: int) -> tuple[RawHistory, ViewInfo]:
        """Raw histories read from one snapshot."""

    @abstractmethod
    def _ads(self, ad_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, ViewInfo]:
        """Ad codes and hits read from one snapshot."""

    @abstractmethod
    def _request(self, user_id: int, t: int, max_len: int, ad_ids: np.ndarray
                 ) -> tuple[RawHistory, np.ndarray, np.ndarray, ViewInfo]:
        """One request's user history and ad codes from one snapshot (one Redis round trip)."""

    def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release backend resources (connections); mmapped files are released by garbage collection."""

    def __enter__(self) -> CacheReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def fm_version(self) -> str:
        return self._fm_version

    # -- validation ------------------------------------------------------------------------------------
    def _check_len(self, max_len: int) -> int:
        if isinstance(max_len, bool) or not isinstance(max_len, _INT_TYPES):
            raise InvalidLookupError(f"max_len must be an int, got {type(max_len).__name__}")
        if not 1 <= max_len <= self.limits.max_len:
            raise InvalidLookupError(f"max_len must be in [1, {self.limits.max_len}], got {max_len}")
        return int(max_len)

    def _check_ads(self, ad_ids: object, check_negative: bool = True) -> np.ndarray:
        ids = _as_ids(ad_ids, "ad_ids", check_negative)
        if len(ids) > self.limits.max_ads:
            raise InvalidLookupError(f"ad_ids has {len(ids)} ids; the limit is max_ads={self.limits.max_ads}")
        return ids

    def _check_request(self, user_id: object, t_ms: object, max_len: object, ad_ids: object,
                       check_negative: bool = True) -> tuple[int, int, int, np.ndarray]:
        """Validated (user_id, t_ms, max_len, int64 ad ids) of one `lookup` call."""
        return (_check_scalar_id(user_id, "user_id", 0), _check_scalar_id(t_ms, "t_ms", 1),
                self._check_len(max_len), self._check_ads(ad_ids, check_negative))

    @staticmethod
    def _check_t(t_ms: object, n: int) -> np.ndarray:
        t = np.asarray(t_ms)
        if t.dtype.kind not in "iu":
            raise InvalidLookupError(f"t_ms must be integer milliseconds, got dtype {t.dtype}")
        t = np.broadcast_to(t.astype(np.int64, copy=False), (n,)) if t.ndim == 0 else t.astype(np.int64, copy=False)
        if t.shape != (n,):
            raise InvalidLookupError(f"t_ms must be a scalar or have shape ({n},), got {t.shape}")
        if n and int(t.min()) <= 0:
            raise InvalidLookupError(f"t_ms must be > 0 (ms since epoch), got {int(t.min())}")
        return t

    # -- public API ------------------------------------------------------------------------------------
    def _finish(self, raw: RawHistory, t: np.ndarray, view: ViewInfo) -> HistoryBatch:
        lengths = raw.lengths
        self.metrics.record_users(lengths, raw.timestamps[:, 0], t)
        fallback = lengths == 0
        if fallback.any():
            # Cold start: one entry holding the population prior, timestamp 0, flagged as fallback.
            raw.codes[fallback, 0] = view.prior
            raw.timestamps[fallback, 0] = 0
            lengths = np.where(fallback, 1, lengths)
        return HistoryBatch(raw.codes, lengths, raw.timestamps, fallback, view.snapshot_id, self._fm_version)

    def user_history(self, user_ids: np.ndarray, t_ms: int | np.ndarray, max_len: int) -> HistoryBatch:
        """The `max_len` most recent codes of each user with timestamp strictly before t, most recent first.

        Args:
            user_ids: int64 [B], >= 0.
            t_ms: request time(s) in ms since epoch, a scalar or int64 [B].
            max_len: L in [1, limits.max_len]; fewer are returned when fewer exist (see `lengths`).
        """
        ids = _as_ids(user_ids, "user_ids")
        if len(ids) > self.limits.max_users:
            raise InvalidLookupError(f"user_ids has {len(ids)} ids; the limit is max_users={self.limits.max_users}")
        max_len = self._check_len(max_len)
        t = self._check_t(t_ms, len(ids))
        raw, view = self._users(ids, t, max_len)
        return self._finish(raw, t, view)

    def ad_codes(self, ad_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Codes of candidate ads: float32 [N, dim] and bool hit [N]; misses are zero rows."""
        ids = self._check_ads(ad_ids)
        codes, hit, _ = self._ads(ids)
        self.metrics.record_ads(hit)
        return codes, hit

    def lookup(self, user_id: int, t_ms: int, max_len: int, ad_ids: np.ndarray
               ) -> tuple[HistoryBatch, np.ndarray, np.ndarray]:
        """Everything one request needs, read from one snapshot in one call (one Redis round trip).

        Returns (HistoryBatch with B=1, ad codes float32 [N, dim], ad hit bool [N]).
        """
        user_id, t_ms, max_len, ids = self._check_request(user_id, t_ms, max_len, ad_ids)
        raw, codes, hit, view = self._request(user_id, t_ms, max_len, ids)
        n_found = int(raw.lengths[0])
        newest_ms = int(raw.timestamps[0, 0])
        hb = self._finish_request(raw.codes, raw.timestamps, n_found, newest_ms, view, t_ms, len(hit), int(hit.sum()))
        return hb, codes, hit

    def _finish_request(self, codes: np.ndarray, stamps: np.ndarray, n_found: int, newest_ms: int, view: ViewInfo,
                        t_ms: int, n_ads: int, n_hit: int) -> HistoryBatch:
        """One request's HistoryBatch (B=1, cold start filled) and its metrics in one update."""
        if n_found:
            self.metrics.record_request(t_ms - newest_ms, n_ads, n_hit)
            return HistoryBatch.of_request(codes, np.array([n_found], np.int64), stamps, np.zeros(1, np.bool_),
                                           view.snapshot_id, self._fm_version)
        self.metrics.record_request(None, n_ads, n_hit)
        codes[0, 0] = view.prior  # cold start: the population prior, timestamp 0, flagged as fallback
        return HistoryBatch.of_request(codes, np.array([1], np.int64), stamps, np.array([True]), view.snapshot_id,
                                       self._fm_version)
