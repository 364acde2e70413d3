"""Reading a whole Redis snapshot back into CSR arrays (a fresh writer carrying rows into its first publish).

Off the request path: O(store) SCAN on every primary (a cluster's SCAN only sees the node it runs on) + MGETs
grouped by slot. Kept apart from redis_backend.py to keep both modules small.
"""

from __future__ import annotations

import numpy as np

from embedding_cache.redis_client import Client, mget_many, scan_keys
from embedding_cache.redis_keys import RedisKeys, load_view
from embedding_cache.snapshot_data import SnapshotData


def _scan_values(client: Client, pattern: str) -> tuple[list[int], list[bytes]]:
    """Ids (the key's last `:` field) and values of every key matching `pattern`, on every primary."""
    ids: list[int] = []
    values: list[bytes] = []
    for key, value in mget_many(client, scan_keys(client, pattern, count=2000)):
        if value is not None:  # deleted between SCAN and MGET
            ids.append(int(key.rsplit(b":", 1)[1]))
            values.append(value)
    return ids, values


def read_snapshot(client: Client, keys: RedisKeys, snapshot_id: str) -> SnapshotData:
    """Rebuild the SnapshotData of a published Redis snapshot."""
    view = load_view(client, keys, snapshot_id)
    bpr, sb, ib = view.bpr, view.scale_bytes, view.id_bytes
    row = view.row_bytes
    uids, uvals = _scan_values(client, keys.user_pattern(snapshot_id))
    order = np.argsort(np.asarray(uids, np.int64), kind="stable")
    ts_parts, code_parts, scale_parts, id_parts, counts = [], [], [], [], []
    for i in order.tolist():
        value = uvals[i]
        n = len(value) // row
        counts.append(n)
        ts_parts.append(np.frombuffer(value, np.int64, n))
        code_parts.append(np.frombuffer(value, np.uint8, n * bpr, 8 * n).reshape(n, bpr))
        scale_parts.append(np.frombuffer(value, np.float32, n, (8 + bpr) * n) if sb else np.zeros(0, np.float32))
        id_parts.append(np.frombuffer(value, np.int64, n, (8 + bpr + sb) * n) if ib else np.full(n, -1, np.int64))
    aids, avals = _scan_values(client, keys.ad_pattern(snapshot_id))
    aorder = np.argsort(np.asarray(aids, np.int64), kind="stable")
    ablob = np.frombuffer(b"".join(avals[i] for i in aorder.tolist()), np.uint8).reshape(len(aids), bpr + sb)
    empty_codes = np.zeros((0, bpr), np.uint8)
    return SnapshotData(
        fm_version=keys.fm, snapshot_id=snapshot_id, codec=view.codec, created_ms=int(view.meta["created_ms"]),
        user_ids=np.asarray(uids, np.int64)[order], offsets=np.r_[0, np.cumsum(counts)].astype(np.int64),
        ts=np.concatenate(ts_parts) if ts_parts else np.zeros(0, np.int64),
        codes=np.concatenate(code_parts) if code_parts else empty_codes,
        scales=np.concatenate(scale_parts).astype(np.float32) if ts_parts else np.zeros(0, np.float32),
        ad_ids=np.asarray(aids, np.int64)[aorder], ad_codes=np.ascontiguousarray(ablob[:, :bpr]),
        ad_scales=ablob[:, bpr:].copy().view(np.float32).ravel() if sb else np.zeros(0, np.float32),
        prior=view.prior, max_segment=int(view.meta["max_segment"]),
        event_ids=np.concatenate(id_parts) if id_parts else np.zeros(0, np.int64),
        coverage=dict(view.meta.get("coverage", {})),
    )
