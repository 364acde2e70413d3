"""LoopFM codes into and out of the embedding cache, for training and for `adrank embed`.

Training VMs read FM history through the same cache reader the ranking service uses and build their
tensors with `models.history.history_tensors`, as serving does, so a cold user gets the same population
prior offline and online and the strictly-before-t rule is enforced by one piece of code.

Publishing is idempotent: every code is keyed on (user_id, event time, event_id), so re-running the embed
job over events already published replaces them instead of adding copies. Each snapshot records its
coverage (source, event-time high-water mark, rows); `since="auto"` resumes after the high-water mark.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from embedding_cache import REDIS_URL_SCHEMES, CacheReader, RetentionConfig, open_reader, open_writer
from models.data.schema import EventLog
from models.history import history_tensors
from models.train import HistorySource

CacheBackend = Literal["embedded", "redis"]


class FmVersionLeak(RuntimeError):
    """A history lookup returned codes of another FM version than the VM is trained with."""


@dataclass(frozen=True)
class CacheLocation:
    """Where codes live: an embedded store directory or a Redis URL (what `--cache-dir` / `--cache-url` say)."""

    backend: CacheBackend
    location: str

    @classmethod
    def from_flags(cls, cache_dir: str | os.PathLike | None, cache_url: str | None) -> CacheLocation:
        if cache_dir and cache_url:
            raise ValueError("give one of --cache-dir and --cache-url, not both")
        if cache_url:
            if not cache_url.startswith(REDIS_URL_SCHEMES):
                raise ValueError(f"--cache-url must start with one of {', '.join(REDIS_URL_SCHEMES)}, "
                                 f"got {cache_url!r}")
            return cls("redis", cache_url)
        if cache_dir:
            return cls("embedded", str(cache_dir))
        raise ValueError("an embedding cache is needed: give --cache-dir DIR or --cache-url redis://HOST:PORT/DB")

    def reader(self, fm_version: str) -> CacheReader:
        return open_reader(self.backend, self.location, fm_version)

    def __str__(self) -> str:
        return self.location


@dataclass(frozen=True)
class PublishResult:
    fm_version: str
    snapshot_id: str
    rows_offered: int  # codes handed to the writer
    rows_before: int  # rows in the snapshot this publish replaced (0 for the first)
    rows_after: int
    high_water_ms: int | None
    codec: str

    @property
    def rows_added(self) -> int:
        return self.rows_after - self.rows_before


def rows_since(events: EventLog, high_water_ms: int | None) -> np.ndarray:
    """Rows at or after the high-water mark. Events at the mark itself are offered again: a late event with
    the same millisecond is then not missed, and the ones already stored are deduplicated by event id."""
    if high_water_ms is None:
        return np.arange(len(events))
    return np.flatnonzero(events["ts_ms"] >= int(high_water_ms))


def user_shard(user_ids: np.ndarray, n_shards: int) -> np.ndarray:
    """The shard (0 .. n_shards-1) of each user: splitmix64 of the id, modulo n_shards.

    Why a hash and not `user_id % n`: ids are often assigned in sign-up order or in blocks, and a mixed
    hash spreads any such pattern evenly. Why this one: it is pure integer arithmetic, so every process,
    machine and Python version puts a user in the same shard (Python's `hash` of a str is salted per
    process)."""
    z = np.asarray(user_ids).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):  # the mixing wraps modulo 2**64 on purpose
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return (z % np.uint64(n_shards)).astype(np.int64)


def publish_codes(cache: CacheLocation | str | os.PathLike, fm_version: str, events: EventLog, rows: np.ndarray,
                  codes: np.ndarray, *, codec: str = "int4", max_per_user: int = 256) -> PublishResult:
    """Writes (user_id, event time, event_id, code) for `rows` as a new snapshot of `fm_version`.

    `codes` is float32 [N, d] indexed like the log (only `rows` are read). A path means an embedded store.
    """
    if not isinstance(cache, CacheLocation):
        cache = CacheLocation("embedded", str(cache))
    writer = open_writer(cache.backend, cache.location, fm_version, dim=codes.shape[1], codec=codec,
                         retention=RetentionConfig(max_per_user=max_per_user, max_age_ms=None))
    before = writer.current_coverage()
    writer.append_user_codes(events["user_id"][rows], events["ts_ms"][rows], np.ascontiguousarray(codes[rows]),
                             event_ids=events["event_id"][rows])
    snapshot = writer.publish(now_ms=int(events["ts_ms"].max()) + 1 if len(events) else None,
                              coverage={"source": events.source})
    after = writer.current_coverage()
    return PublishResult(fm_version, snapshot, int(len(rows)), int(before.get("rows", 0)), int(after["rows"]),
                         after.get("high_water_ms"), codec)


def cache_history(reader: CacheReader, events: EventLog, fm_version: str, *, width: int | None = None) -> HistorySource:
    """A training-time history source: for each row, the user's codes strictly before the row's time,
    read from `reader` (newest first; the cold-start prior for users without history), as model inputs."""
    if reader.fm_version != fm_version:
        raise FmVersionLeak(f"reader serves {reader.fm_version}, the VM is trained with {fm_version}")
    users, ts = events["user_id"], events["ts_ms"]
    dim = width or reader.dim

    def source(rows: np.ndarray, max_len: int) -> dict[str, np.ndarray]:
        hb = reader.user_history(users[rows], ts[rows], max_len)
        if hb.fm_version != fm_version:
            raise FmVersionLeak(f"lookup returned {hb.fm_version} codes for a VM trained with {fm_version}")
        return history_tensors(hb.codes, hb.lengths, max_len, dim, np.arange(len(rows)))

    return source


def open_history(root: str | Path | CacheLocation, fm_version: str, events: EventLog, *,
                 width: int | None = None) -> HistorySource:
    cache = root if isinstance(root, CacheLocation) else CacheLocation("embedded", str(root))
    return cache_history(cache.reader(fm_version), events, fm_version, width=width)
