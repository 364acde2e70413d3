"""Vectorized point-in-time lookups over one snapshot's CSR arrays (embedded and in-memory backends).

No Python loop runs per row or per user: a batch of users is resolved with np.searchsorted over the
sorted user ids, a fixed number of vectorized binary-search steps over each user's timestamp segment
(segments are at most `max_segment` long, bounded by retention), and one fancy-index gather of the code
bytes. A single user (the serving case) takes a scalar path that slices instead of fancy-indexing.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from embedding_cache.snapshot_data import SnapshotData


class RawHistory(NamedTuple):
    """Decoded history before cold-start filling; `lengths == 0` marks users with nothing before t."""

    codes: np.ndarray  # float32 [B, L, dim]
    lengths: np.ndarray  # int64 [B]
    timestamps: np.ndarray  # int64 [B, L]


def _segment_cut(data: SnapshotData, start: np.ndarray, end: np.ndarray, t: np.ndarray) -> np.ndarray:
    """For each user, the first row index in [start, end) whose ts >= t (so rows before it are < t)."""
    ts = data.ts
    lo, hi = start.copy(), end.copy()
    last = max(len(ts) - 1, 0)
    for _ in range(max(data.max_segment, 1).bit_length()):
        active = lo < hi
        mid = (lo + hi) >> 1
        less = ts[np.minimum(mid, last)] < t
        lo = np.where(active & less, mid + 1, lo)
        hi = np.where(active & ~less, mid, hi)
    return lo


def user_history_one(data: SnapshotData, user_id: int, t: int, max_len: int) -> RawHistory:
    """One user's `max_len` most recent codes with ts < t, most recent first (scalar fast path)."""
    dim = data.dim
    codes = np.zeros((1, max_len, dim), np.float32)
    stamps = np.zeros((1, max_len), np.int64)
    uids = data.user_ids
    p = int(np.searchsorted(uids, user_id))
    if p == len(uids) or uids[p] != user_id:
        return RawHistory(codes, np.zeros(1, np.int64), stamps)
    s, e = int(data.offsets[p]), int(data.offsets[p + 1])
    c = s + int(np.searchsorted(data.ts[s:e], t))
    n = min(c - s, max_len)
    if n:
        lo = c - n
        scales = data.scales[lo:c] if len(data.scales) else data.scales
        codes[0, :n] = data.codec.decode(data.codes[lo:c], scales)[::-1]
        stamps[0, :n] = data.ts[lo:c][::-1]
    return RawHistory(codes, np.array([n], np.int64), stamps)


def user_history_batch(data: SnapshotData, user_ids: np.ndarray, t: np.ndarray, max_len: int) -> RawHistory:
    """B users' histories at their own times t[b]; fully vectorized."""
    b = len(user_ids)
    uids = data.user_ids
    codes = np.zeros((b, max_len, data.dim), np.float32)
    stamps = np.zeros((b, max_len), np.int64)
    if len(uids) == 0 or b == 0:
        return RawHistory(codes, np.zeros(b, np.int64), stamps)
    pos = np.minimum(np.searchsorted(uids, user_ids), len(uids) - 1)
    found = uids[pos] == user_ids
    start = np.where(found, data.offsets[pos], 0)
    end = np.where(found, data.offsets[pos + 1], 0)
    cut = _segment_cut(data, start, end, t)
    lengths = np.minimum(cut - start, max_len).astype(np.int64)
    j = np.arange(max_len)
    mask = j[None, :] < lengths[:, None]
    rows = (cut[:, None] - 1 - j[None, :])[mask]
    if len(rows):
        scales = data.scales[rows] if len(data.scales) else data.scales
        codes[mask] = data.codec.decode(data.codes[rows], scales)
        stamps[mask] = data.ts[rows]
    return RawHistory(codes, lengths, stamps)


def ad_codes(data: SnapshotData, ad_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes of candidate ads (float32 [N, dim]) and which were found; misses are zero rows."""
    n = len(ad_ids)
    ids = data.ad_ids
    if len(ids) == 0 or n == 0:
        return np.zeros((n, data.dim), np.float32), np.zeros(n, bool)
    pos = np.minimum(np.searchsorted(ids, ad_ids), len(ids) - 1)
    hit = ids[pos] == ad_ids
    has_scales = len(data.ad_scales) > 0
    if hit.all():
        return data.codec.decode(data.ad_codes[pos], data.ad_scales[pos] if has_scales else data.ad_scales), hit
    out = np.zeros((n, data.dim), np.float32)
    rows = pos[hit]
    if len(rows):
        out[hit] = data.codec.decode(data.ad_codes[rows], data.ad_scales[rows] if has_scales else data.ad_scales)
    return out, hit
