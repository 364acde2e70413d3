"""Versioned point-in-time store of historical FM embeddings (numpy + a numba kernel on the request path; no torch).

    from embedding_cache import open_reader, EmbeddedWriter
    writer = EmbeddedWriter(root, fm_version="fm-v1", dim=32, codec="int8")
    writer.append_user_codes(user_ids, ts_ms, codes)      # int64 [n], int64 [n], float32 [n, 32]
    writer.append_ad_codes(ad_ids, ad_codes)
    writer.publish()
    reader = open_reader("embedded", root, fm_version="fm-v1")
    hb, ad_codes, ad_hit = reader.lookup(user_id, t_ms, max_len=64, ad_ids=candidates)
    # hb.codes[0, :hb.lengths[0]] are the newest-first codes with ts < t_ms

See docs/cache.md for the layout, the Redis key scheme, freshness and benchmark figures.
"""

from __future__ import annotations

import os
from typing import Literal

from prometheus_client.registry import CollectorRegistry

from embedding_cache.batch import HistoryBatch
from embedding_cache.codecs import CODEC_NAMES, make_codec
from embedding_cache.config import LookupLimits, RetentionConfig
from embedding_cache.embedded import EmbeddedReader, EmbeddedWriter
from embedding_cache.errors import (
    CacheError,
    CacheUnavailableError,
    CorruptSnapshotError,
    FmVersionMismatchError,
    InvalidLookupError,
    SnapshotNotFoundError,
)
from embedding_cache.memory import InMemoryStore, MemoryReader, MemoryWriter
from embedding_cache.metrics import CacheMetrics
from embedding_cache.reader import CacheReader
from embedding_cache.redis_backend import RedisReader, RedisWriter
from embedding_cache.redis_client import URL_SCHEMES as REDIS_URL_SCHEMES
from embedding_cache.report import CodecReport, bytes_per_user, codec_report
from embedding_cache.writer import SnapshotWriter

Backend = Literal["embedded", "redis", "memory"]


def open_reader(backend: Backend, location: str | os.PathLike | InMemoryStore, fm_version: str, *,
                snapshot_id: str | None = None, limits: LookupLimits | None = None,
                registry: CollectorRegistry | None = None) -> CacheReader:
    """Open a reader of `fm_version` on a backend.

    Args:
        backend: "embedded" (location = root directory), "redis" (location = a redis://HOST:PORT/DB URL, or
            redis+cluster://HOST:PORT[,HOST:PORT...]/ for a Redis Cluster) or "memory" (location = an InMemoryStore).
        fm_version: the FM version the serving VM was trained with; FmVersionMismatchError if absent.
        snapshot_id: pin a snapshot instead of following the current pointer (embedded, redis).
        limits: lookup limits (InvalidLookupError beyond them).
        registry: a prometheus CollectorRegistry to export the reader's metrics to.
    """
    limits = limits or LookupLimits()
    if backend == "embedded":
        return EmbeddedReader(location, fm_version, snapshot_id=snapshot_id, limits=limits, registry=registry)
    if backend == "redis":
        return RedisReader(str(location), fm_version, snapshot_id=snapshot_id, limits=limits, registry=registry)
    if backend == "memory":
        if not isinstance(location, InMemoryStore):
            raise InvalidLookupError("the memory backend needs an InMemoryStore as location")
        return location.reader(fm_version, limits, registry)
    raise InvalidLookupError(f"unknown backend {backend!r}; choose embedded, redis or memory")


def open_writer(backend: Backend, location: str | os.PathLike | InMemoryStore, fm_version: str, *, dim: int,
                codec: str = "int8", retention: RetentionConfig | None = None, **codec_params: int) -> SnapshotWriter:
    """Open a writer of `fm_version` on a backend (the same `backend` / `location` pairs as `open_reader`)."""
    if backend == "embedded":
        return EmbeddedWriter(location, fm_version, dim, codec, retention, **codec_params)
    if backend == "redis":
        return RedisWriter(str(location), fm_version, dim, codec, retention, **codec_params)
    if backend == "memory":
        if not isinstance(location, InMemoryStore):
            raise InvalidLookupError("the memory backend needs an InMemoryStore as location")
        return location.writer(fm_version, dim, codec, retention, **codec_params)
    raise InvalidLookupError(f"unknown backend {backend!r}; choose embedded, redis or memory")


__all__ = [
    "CODEC_NAMES", "CacheError", "CacheMetrics", "CacheReader", "CacheUnavailableError", "CodecReport",
    "CorruptSnapshotError", "EmbeddedReader", "EmbeddedWriter", "FmVersionMismatchError", "HistoryBatch",
    "InMemoryStore", "InvalidLookupError", "LookupLimits", "MemoryReader", "MemoryWriter", "REDIS_URL_SCHEMES",
    "RedisReader",
    "RedisWriter", "RetentionConfig", "SnapshotNotFoundError", "bytes_per_user", "codec_report", "make_codec",
    "SnapshotWriter", "open_reader", "open_writer",
]
