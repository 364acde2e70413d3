"""Copies an embedded cache's current snapshots into the stack's Redis, unchanged.

The replicas of a stack share one store, as they would across machines, so `adrank up` serves the demo's LoopFM
models from Redis. The snapshot is stored as it is (the same encoded bytes, the same cold-start prior, the same
codec state) under a new Redis snapshot id, so the scores equal those served from the embedded cache; re-encoding
the decoded codes would not guarantee that.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from embedding_cache import RedisWriter
from embedding_cache.embedded import CURRENT, open_snapshot


def fm_versions(cache_dir: Path) -> list[str]:
    """fm_versions with a published snapshot (a CURRENT pointer) in an embedded cache."""
    return sorted(p.name for p in cache_dir.iterdir() if p.is_dir() and (p / CURRENT).is_file())


def copy_to_redis(cache_dir: Path, url: str) -> dict[str, int]:
    """Every fm_version's current snapshot → Redis at `url`; returns {fm_version: rows}."""
    copied = {}
    for fm_version in fm_versions(cache_dir):
        data = open_snapshot(cache_dir, fm_version)
        writer = RedisWriter(url, fm_version, data.dim, data.codec.name)
        writer.codec = data.codec  # the stored bytes' codec, fitted state included (PQ codebooks)
        # the writer's publish() would rebuild the snapshot from decoded rows; storing it keeps every byte
        writer._store(replace(data, snapshot_id=writer._next_snapshot_id()))  # noqa: SLF001
        copied[fm_version] = int(data.n_rows)
    return copied
