"""LoopFM codes into and out of the embedding cache, for training and for `adrank embed`.

Training VMs read FM history through the same cache reader the ranking service uses, so a cold user
gets the same population prior offline and online, and the strictly-before-t rule is enforced by
one piece of code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedding_cache import CacheReader, EmbeddedWriter, RetentionConfig, open_reader
from models.data.schema import EventLog
from models.train import HistorySource


class FmVersionLeak(RuntimeError):
    """A history lookup returned codes of another FM version than the VM is trained with."""


def publish_codes(root: str | Path, fm_version: str, events: EventLog, rows: np.ndarray, codes: np.ndarray, *,
                  codec: str = "int4", max_per_user: int = 256) -> str:
    """Writes (user_id, event time, code) for `rows` as a new snapshot of `fm_version`; returns its id."""
    writer = EmbeddedWriter(root, fm_version, dim=codes.shape[1], codec=codec,
                            retention=RetentionConfig(max_per_user=max_per_user, max_age_ms=None))
    writer.append_user_codes(events["user_id"][rows], events["ts_ms"][rows], np.ascontiguousarray(codes[rows]))
    return writer.publish(now_ms=int(events["ts_ms"].max()) + 1)


def cache_history(reader: CacheReader, events: EventLog, fm_version: str, *, width: int | None = None) -> HistorySource:
    """A training-time history source: for each row, the user's codes strictly before the row's time,
    read from `reader` (newest first; the cold-start prior for users without history)."""
    if reader.fm_version != fm_version:
        raise FmVersionLeak(f"reader serves {reader.fm_version}, the VM is trained with {fm_version}")
    users, ts = events["user_id"], events["ts_ms"]

    def source(rows: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        hb = reader.user_history(users[rows], ts[rows], max_len)
        if hb.fm_version != fm_version:
            raise FmVersionLeak(f"lookup returned {hb.fm_version} codes for a VM trained with {fm_version}")
        mask = (np.arange(max_len)[None, :] < hb.lengths[:, None]).astype(np.float32)
        codes = hb.codes[:, :max_len, :width] if width else hb.codes[:, :max_len]
        return np.ascontiguousarray(codes, dtype=np.float32), mask

    return source


def open_history(root: str | Path, fm_version: str, events: EventLog, *, width: int | None = None) -> HistorySource:
    return cache_history(open_reader("embedded", root, fm_version), events, fm_version, width=width)
