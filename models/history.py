"""The one history feature path: the strictly-before rule, the FM-history tensors and their names.

Training, the embed job and serving all read history through this module (numpy only, so the ranking
service imports it without torch):

* `StrictlyBefore` groups an event log by (user, timestamp) once. An event sees only its user's events
  with a timestamp strictly smaller than its own: events that share the row's millisecond are never
  visible, not even to each other, so an example can never see itself or anything simultaneous (the
  leakage rule LoopFM needs, DESIGN §3). `HistoryIndex` (the FM's long event history) and the recent-click
  feature (`models.features.recent_categories_from_log`) are both built on it.
* `history_tensors` turns a cache lookup (codes newest first, lengths) into the model inputs named in
  `HISTORY_INPUTS`: the slice to L codes of width d, the validity mask, and the user index of each row.
* `HistorySpec` is what a LoopFM VM was trained with (fm_version, L, width, codec, pooling); it travels
  in the checkpoint and the exported manifest so serving builds the same tensors from the same codes.

Usage::

    idx = HistoryIndex(events["user_id"], events["ts_ms"])
    rows, mask = idx.before(batch_rows, max_len=64)   # [B, T] row ids (most recent first), validity
    hb = reader.user_history(users, t_ms, spec.length)
    inputs = history_tensors(hb.codes, hb.lengths, spec, user_index=np.arange(len(users)))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np

FM_HISTORY = "fm_history"  # float32 [U, L, d]: codes, newest first, zero padded
FM_HISTORY_MASK = "fm_history_mask"  # float32 [U, L]: 1 where a code is valid
USER_INDEX = "user_index"  # int64 [B]: which of the U users each candidate row belongs to
HISTORY_INPUTS: tuple[str, ...] = (FM_HISTORY, FM_HISTORY_MASK, USER_INDEX)

POOLINGS = ("sum", "attention")


class StrictlyBefore:
    """(user, timestamp) grouping of an event log, computed once.

    For every row (in log order): `visible[row]` = how many of its user's events have a strictly smaller
    timestamp; in the sorted order (`order`, user-major then time, stable on ties) those are the positions
    `user_start[row] .. user_start[row] + visible[row] - 1`.
    """

    def __init__(self, user_id: np.ndarray, ts_ms: np.ndarray) -> None:
        n = len(user_id)
        order = np.lexsort((ts_ms, user_id))  # user-major, then time; stable for ties
        u, t = user_id[order], ts_ms[order]
        new_group = np.r_[True, (u[1:] != u[:-1]) | (t[1:] != t[:-1])] if n else np.zeros(0, bool)
        new_user = np.r_[True, u[1:] != u[:-1]] if n else np.zeros(0, bool)
        pos = np.arange(n)
        # sorted position of the first event of each row's (user, ts) group and of its user
        self.group_start = np.maximum.accumulate(np.where(new_group, pos, 0)) if n else pos
        self.user_start_sorted = np.maximum.accumulate(np.where(new_user, pos, 0)) if n else pos
        self.order = order  # sorted position → row id
        self.position = np.empty(n, dtype=np.int64)  # row id → sorted position
        self.position[order] = pos

    def count_before(self, weights_sorted: np.ndarray) -> np.ndarray:
        """Per sorted position: the sum of `weights_sorted` over the user's strictly earlier events."""
        before = np.cumsum(weights_sorted) - weights_sorted  # running total strictly before each position
        return before[self.group_start] - before[self.user_start_sorted]


class HistoryIndex:
    """The most recent T events of a row's user with a timestamp strictly before the row's, for any batch
    of rows, without materialising an [N, T] matrix."""

    def __init__(self, user_id: np.ndarray, ts_ms: np.ndarray) -> None:
        groups = StrictlyBefore(user_id, ts_ms)
        self.order, self.position = groups.order, groups.position
        self.visible = (groups.group_start - groups.user_start_sorted).astype(np.int64)
        self.user_start = groups.user_start_sorted.astype(np.int64)

    def before(self, rows: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
        """Row ids [B, max_len] of the most recent visible events (newest first; -1 = padding) and a mask."""
        p = self.position[rows]
        visible = self.visible[p]
        j = np.arange(max_len)[None, :]
        mask = j < visible[:, None]
        sorted_pos = (self.user_start[p] + visible)[:, None] - 1 - j
        out = np.where(mask, self.order[np.clip(sorted_pos, 0, None)], -1)
        return out, mask


@dataclass(frozen=True, kw_only=True)
class HistorySpec:
    """What a LoopFM VM reads: `length` codes (L) of `width` dims of `fm_version`, stored with `codec`,
    pooled by `pooling`. Serving refuses a cache whose codes differ (another version, codec or width)."""

    fm_version: str
    length: int
    width: int
    codec: str
    pooling: str = "sum"

    def __post_init__(self) -> None:
        if not self.fm_version or self.fm_version == "none":
            raise ValueError("HistorySpec.fm_version: a LoopFM VM needs the FM version its codes come from")
        if not 1 <= self.length <= 4096:
            raise ValueError(f"HistorySpec.length: must be in [1, 4096], got {self.length}")
        if not 1 <= self.width <= 4096:
            raise ValueError(f"HistorySpec.width: must be in [1, 4096], got {self.width}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"HistorySpec.pooling: must be one of {POOLINGS}, got {self.pooling!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HistorySpec:
        return cls(fm_version=str(d["fm_version"]), length=int(d["length"]), width=int(d["width"]),
                   codec=str(d["codec"]), pooling=str(d.get("pooling", "sum")))


@lru_cache(maxsize=64)
def _mask_table(length: int) -> np.ndarray:
    """Row n is the mask of a history with n valid codes: [1]*n + [0]*(length - n). Read-only, shared."""
    table = (np.arange(length)[None, :] < np.arange(length + 1)[:, None]).astype(np.float32)
    table.flags.writeable = False
    return table


def history_tensors(codes: np.ndarray, lengths: np.ndarray, length: int, width: int,
                    user_index: np.ndarray) -> dict[str, np.ndarray]:
    """Model inputs from a lookup: `codes` float32 [U, >=L, >=d] newest first, `lengths` int [U] valid codes
    per user (the cold-start prior counts as one), `user_index` int64 [B] the user of each candidate row.

    The mask is one row of a cached table per length (a request pays one small gather, not three array ops);
    the codes are passed through without a copy when the lookup already returned exactly L × d float32.
    """
    if codes.ndim != 3 or codes.shape[2] < width or codes.shape[1] < length:
        raise ValueError(f"history codes of shape {codes.shape} cannot give {length} codes of width {width}")
    if codes.shape[1] != length or codes.shape[2] != width or codes.dtype != np.float32:
        codes = np.ascontiguousarray(codes[:, :length, :width], dtype=np.float32)
    if user_index.dtype != np.int64:
        user_index = user_index.astype(np.int64)
    if len(lengths) == 1:  # one request's user
        return request_tensors(codes, mask_rows(length)[min(int(lengths[0]), length)], user_index)
    mask = _mask_table(length)[np.minimum(lengths, length)]
    return {FM_HISTORY: codes, FM_HISTORY_MASK: mask, USER_INDEX: user_index}


@lru_cache(maxsize=64)
def mask_rows(length: int) -> tuple[np.ndarray, ...]:
    """`mask_rows(L)[n]` is the float32 [1, L] mask of one user with n valid codes: a read-only view of the
    cached table's row, so a request's mask costs a tuple index, no allocation."""
    table = _mask_table(length)
    return tuple(table[n:n + 1] for n in range(length + 1))


def request_tensors(codes: np.ndarray, mask: np.ndarray, user_index: np.ndarray) -> dict[str, np.ndarray]:
    """`history_tensors` of one user whose `codes` are already exactly float32 [1, L, d] (the serving
    path's lookup decodes into that shape): `mask` is `mask_rows(L)[n]` for its n valid codes (the
    cold-start prior counts as one), `user_index` int64 [B] the user of each candidate row (all 0)."""
    return {FM_HISTORY: codes, FM_HISTORY_MASK: mask, USER_INDEX: user_index}
