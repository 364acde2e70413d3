"""The in-memory form of one snapshot (CSR arrays) and how a publish builds it.

A snapshot is immutable: `build_snapshot` merges the previous snapshot's rows with the appends made since,
sorts them by (user, timestamp), applies retention and returns new arrays. Every backend stores exactly
these arrays (the embedded store as files, Redis as one packed value per user, the in-memory store as-is),
so the three backends answer identically.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from embedding_cache.codecs import Codec
from embedding_cache.config import RetentionConfig

NO_EVENT_ID = -1
"""Event id of a row appended without one: such rows are never deduplicated (each append is kept)."""


def _no_event_ids(n: int) -> np.ndarray:
    return np.full(n, NO_EVENT_ID, np.int64)


@dataclass(frozen=True)
class EncodedRows:
    """Rows already passed through a codec: ids, timestamps (users only), code bytes, row scales and, for
    user rows, the event id each code was computed from (NO_EVENT_ID when the caller gave none)."""

    ids: np.ndarray
    ts: np.ndarray
    codes: np.ndarray
    scales: np.ndarray
    event_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __post_init__(self) -> None:
        if len(self.ts) and len(self.event_ids) != len(self.ids):
            object.__setattr__(self, "event_ids", _no_event_ids(len(self.ids)))


@dataclass(frozen=True)
class SnapshotData:
    """One immutable snapshot of one fm_version.

    Users are in CSR form: `user_ids` sorted ascending and unique; user i's rows are
    `offsets[i]:offsets[i+1]` of `ts`/`codes`/`scales`/`event_ids`, sorted by timestamp ascending (append
    order on ties). A (user, ts, event_id) key appears at most once: publishing an event again replaces it.
    `coverage` says what the snapshot holds: the event source, the event-time high-water mark (the newest
    event timestamp ever published into this fm_version) and the row count; the nearline embed job resumes
    from it.
    Ads: `ad_ids` sorted unique, one row each. `scales` arrays are empty for codecs without row scales.
    `prior` is the cold-start code; `max_segment` the longest user segment (bounds the binary search).
    """

    fm_version: str
    snapshot_id: str
    codec: Codec
    created_ms: int
    user_ids: np.ndarray
    offsets: np.ndarray
    ts: np.ndarray
    codes: np.ndarray
    scales: np.ndarray
    ad_ids: np.ndarray
    ad_codes: np.ndarray
    ad_scales: np.ndarray
    prior: np.ndarray
    max_segment: int
    event_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    coverage: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.event_ids) != len(self.ts):  # snapshots written before event ids: rows count as anonymous
            object.__setattr__(self, "event_ids", _no_event_ids(len(self.ts)))

    @property
    def dim(self) -> int:
        return self.codec.dim

    @property
    def n_rows(self) -> int:
        return int(len(self.ts))

    def user_rows(self) -> EncodedRows:
        """All user rows with their ids expanded (used to carry them into the next snapshot)."""
        ids = np.repeat(self.user_ids, np.diff(self.offsets))
        return EncodedRows(ids, self.ts, self.codes, self.scales, self.event_ids)

    def ad_rows(self) -> EncodedRows:
        return EncodedRows(self.ad_ids, np.zeros(0, np.int64), self.ad_codes, self.ad_scales)


def _concat(parts: list[EncodedRows], codec: Codec) -> EncodedRows:
    if not parts:
        empty_scales = np.zeros(0, np.float32)
        return EncodedRows(np.zeros(0, np.int64), np.zeros(0, np.int64),
                           np.zeros((0, codec.bytes_per_row), np.uint8), empty_scales, np.zeros(0, np.int64))
    if len(parts) == 1:
        return parts[0]
    return EncodedRows(
        np.concatenate([p.ids for p in parts]),
        np.concatenate([p.ts for p in parts]),
        np.concatenate([p.codes for p in parts]),
        np.concatenate([p.scales for p in parts]),
        np.concatenate([p.event_ids for p in parts]),
    )


def _is_sorted(ids: np.ndarray, ts: np.ndarray) -> bool:
    """Whether rows are already ordered by (id, ts); generated or carried-over data usually is."""
    if len(ids) < 2:
        return True
    d_id = np.diff(ids)
    return bool(np.all((d_id > 0) | ((d_id == 0) & (np.diff(ts) >= 0))))


def _take(rows: EncodedRows, index: np.ndarray) -> EncodedRows:
    return EncodedRows(rows.ids[index], rows.ts[index] if len(rows.ts) else rows.ts, rows.codes[index],
                       rows.scales[index] if len(rows.scales) else rows.scales,
                       rows.event_ids[index] if len(rows.event_ids) else rows.event_ids)


def drop_republished(rows: EncodedRows) -> EncodedRows:
    """Keep the last append of each (user, ts, event_id): the same event published twice is stored once,
    with its newest code. Rows without an event id (NO_EVENT_ID) are all kept. Order is otherwise unchanged."""
    eid = rows.event_ids
    named = np.flatnonzero(eid != NO_EVENT_ID)
    if len(named) < 2:
        return rows
    # group equal keys; within a key, the highest position (the latest append) wins
    order = np.lexsort((named, eid[named], rows.ts[named], rows.ids[named]))
    k = named[order]
    same_as_next = ((rows.ids[k][1:] == rows.ids[k][:-1]) & (rows.ts[k][1:] == rows.ts[k][:-1])
                    & (eid[k][1:] == eid[k][:-1]))
    if not same_as_next.any():
        return rows
    keep = np.ones(len(rows.ids), bool)
    keep[k[:-1][same_as_next]] = False
    return _take(rows, np.flatnonzero(keep))


def compact_users(rows: EncodedRows, retention: RetentionConfig, now_ms: int) -> EncodedRows:
    """Sort rows by (user, ts) stably, drop republished events, drop rows older than the age limit, keep the
    newest `max_per_user`."""
    if not _is_sorted(rows.ids, rows.ts):
        rows = _take(rows, np.lexsort((rows.ts, rows.ids)))  # lexsort is stable: ties keep append order
    rows = drop_republished(rows)
    keep = np.ones(len(rows.ids), bool)
    if retention.max_age_ms is not None:
        keep &= rows.ts >= now_ms - retention.max_age_ms
    if len(rows.ids):
        ids = rows.ids
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        ends = np.r_[starts[1:], len(ids)]
        seg_end = np.repeat(ends, ends - starts)
        keep &= (seg_end - np.arange(len(ids))) <= retention.max_per_user
    if not keep.all():
        rows = _take(rows, np.flatnonzero(keep))
    return rows


def dedupe_ads(rows: EncodedRows) -> EncodedRows:
    """Sort ads by id, keeping the last append of each id (a re-embedded ad replaces its old code)."""
    if len(rows.ids) == 0:
        return rows
    rev = rows.ids[::-1]
    _, first_in_rev = np.unique(rev, return_index=True)
    index = len(rows.ids) - 1 - first_in_rev  # np.unique sorts the ids ascending
    return _take(rows, index)


def population_prior(codec: Codec, user_ids: np.ndarray, offsets: np.ndarray, codes: np.ndarray,
                     scales: np.ndarray, max_users: int = 200_000) -> np.ndarray:
    """Mean of each user's most recent code over (a sample of) users: the cold-start code.

    Each user counts once (heavy users do not dominate) and only their latest code is used, i.e. the prior
    is "where a typical user is now". It is cheap (one decoded row per user) and needs no request context.
    """
    if len(user_ids) == 0:
        return np.zeros(codec.dim, np.float32)
    last = offsets[1:] - 1
    if len(last) > max_users:
        last = last[np.linspace(0, len(last) - 1, max_users).astype(np.int64)]
    dec = codec.decode(codes[last], scales[last] if len(scales) else scales)
    return dec.mean(axis=0).astype(np.float32)


def merge_coverage(base: SnapshotData | None, users: list[EncodedRows], coverage: dict | None,
                   n_rows: int) -> dict:
    """What the new snapshot covers: the caller's fields (e.g. source), the event-time high-water mark over
    every publish so far, and the row count."""
    out = dict(base.coverage) if base is not None else {}
    out.update(coverage or {})
    newest = [int(u.ts.max()) for u in users if len(u.ts)]
    marks = newest + ([int(out["high_water_ms"])] if out.get("high_water_ms") is not None else [])
    out["high_water_ms"] = max(marks) if marks else None
    out["rows"] = int(n_rows)
    return out


def build_snapshot(*, fm_version: str, snapshot_id: str, codec: Codec, created_ms: int,
                   base: SnapshotData | None, users: list[EncodedRows], ads: list[EncodedRows],
                   retention: RetentionConfig, coverage: dict | None = None) -> SnapshotData:
    """Merge `base` (the previous snapshot, may be None) with new encoded rows into a new snapshot."""
    user_parts = ([base.user_rows()] if base is not None and base.n_rows else []) + list(users)
    ad_parts = ([base.ad_rows()] if base is not None and len(base.ad_ids) else []) + list(ads)
    urows = compact_users(_concat(user_parts, codec), retention, created_ms)
    arows = dedupe_ads(_concat(ad_parts, codec))
    ids = urows.ids
    if len(ids):
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        user_ids = ids[starts]
        offsets = np.r_[starts, len(ids)].astype(np.int64)
        max_segment = int(np.diff(offsets).max())
    else:
        user_ids, offsets, max_segment = np.zeros(0, np.int64), np.zeros(1, np.int64), 0
    prior = population_prior(codec, user_ids, offsets, urows.codes, urows.scales)
    return SnapshotData(
        fm_version=fm_version, snapshot_id=snapshot_id, codec=codec, created_ms=created_ms,
        user_ids=np.ascontiguousarray(user_ids, np.int64), offsets=offsets,
        ts=np.ascontiguousarray(urows.ts, np.int64), codes=np.ascontiguousarray(urows.codes, np.uint8),
        scales=np.ascontiguousarray(urows.scales, np.float32),
        ad_ids=np.ascontiguousarray(arows.ids, np.int64), ad_codes=np.ascontiguousarray(arows.codes, np.uint8),
        ad_scales=np.ascontiguousarray(arows.scales, np.float32), prior=prior, max_segment=max_segment,
        event_ids=np.ascontiguousarray(urows.event_ids, np.int64),
        coverage=merge_coverage(base, users, coverage, len(urows.ts)),
    )
