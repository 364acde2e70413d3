"""Point-in-time history lookups over an event log, vectorized.

`HistoryIndex` answers "the most recent T events of this row's user with timestamp strictly before
this row's timestamp" for any batch of rows, without materializing an [N, T] matrix. Events that
share the row's millisecond are never visible (not even to each other), so an example can never
see itself or anything simultaneous — the leakage rule LoopFM needs (DESIGN §3).

Usage::

    idx = HistoryIndex(events["user_id"], events["ts_ms"])
    rows, mask = idx.before(batch_rows, max_len=64)   # [B, T] row ids (most recent first), validity
"""

from __future__ import annotations

import numpy as np


class HistoryIndex:
    def __init__(self, user_id: np.ndarray, ts_ms: np.ndarray) -> None:
        n = len(user_id)
        order = np.lexsort((ts_ms, user_id))  # user-major, then time; stable for ties
        u, t = user_id[order], ts_ms[order]
        new_group = np.r_[True, (u[1:] != u[:-1]) | (t[1:] != t[:-1])] if n else np.zeros(0, bool)
        new_user = np.r_[True, u[1:] != u[:-1]] if n else np.zeros(0, bool)
        pos = np.arange(n)
        group_start = np.maximum.accumulate(np.where(new_group, pos, 0)) if n else pos
        user_start = np.maximum.accumulate(np.where(new_user, pos, 0)) if n else pos
        self.order = order  # sorted position → row id
        self.position = np.empty(n, dtype=np.int64)  # row id → sorted position
        self.position[order] = pos
        # number of the user's events strictly before this row's timestamp, and where they start
        self.visible = (group_start - user_start).astype(np.int64)
        self.user_start = user_start.astype(np.int64)

    def before(self, rows: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Row ids [B, max_len] of the most recent visible events (newest first; -1 = padding) and a mask."""
        p = self.position[rows]
        visible = self.visible[p]
        j = np.arange(max_len)[None, :]
        mask = j < visible[:, None]
        sorted_pos = (self.user_start[p] + visible)[:, None] - 1 - j
        out = np.where(mask, self.order[np.clip(sorted_pos, 0, None)], -1)
        return out, mask
