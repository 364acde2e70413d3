"""The serving path's history lookup: one compiled call per request, the snapshot-level checks made once.

A LoopFM model reads L codes of width d of one fm_version, stored with one codec. `HistoryLookup.bind`
checks L against the reader's limits and the snapshot's width and codec against the model's once, and
again only when a refresh swaps the snapshot (an identity check per request finds out). A request then
pays one fresh output array and one compiled call (kernels._served_history), which refuses a negative
user id or a non-positive t, finds the rows strictly before t, decodes them straight into the model's
float32 [1, L, d] input, fills the cold-start prior and counts the lookup in the reader's metrics.

    lookup = reader.history_lookup(length=32, width=32, codec="int4")   # None: serve through reader.lookup
    codes, n_found, snapshot_id = lookup.fetch(user_id, t_ms)            # n_found 0: the prior in row 0

The result equals `reader.lookup(user_id, t_ms, L, [])` sliced to d dims, bit for bit
(tests/unit/embedding_cache/test_served_history.py). Every call allocates its output, so no request
can see another's codes, whichever threads or tasks interleave.
"""

from __future__ import annotations

import numpy as np

from embedding_cache.errors import FmVersionMismatchError, InvalidLookupError
from embedding_cache.kernels import ERR_SHAPE
from embedding_cache.reader import _check_scalar_id

_INT_TYPES = (int, np.integer)
_ERR_RANGE = ERR_SHAPE - 1  # an argument numba could not convert to int64
_FLOAT32 = np.dtype(np.float32)  # a dtype object: np.empty resolves it faster than the type


class HistoryLookup:
    """One model's view of one reader (see the module docstring); thread-safe: each call reads one
    consistent binding (snapshot, compiled call, descriptor, snapshot id) as a single tuple."""

    __slots__ = ("_reader", "length", "width", "codec", "_shape", "_bound")

    def __init__(self, reader, length: int, width: int, codec: str) -> None:  # reader: memory.CsrReader
        self._reader, self.length, self.width, self.codec = reader, length, width, codec
        self._shape = (1, length, width)
        self._bound: tuple | None = None

    @classmethod
    def bind(cls, reader, length: int, width: int, codec: str = "") -> HistoryLookup | None:
        """The lookup for `reader`'s snapshots, or None when its snapshot is served by `lookup` only."""
        length = reader._check_len(length)
        if isinstance(width, bool) or not isinstance(width, _INT_TYPES) or width < 1:
            raise InvalidLookupError(f"width must be an int >= 1, got {width!r}")
        self = cls(reader, length, int(width), codec)
        return self if self._rebind(reader._served) is not None else None

    def _rebind(self, served) -> tuple | None:
        """Checks a snapshot once and binds to it; None when the served kernel cannot decode its codes."""
        history = served.history
        if history is None:
            return None
        if history.dim < self.width:
            raise FmVersionMismatchError(f"snapshot {served.info.snapshot_id} of {self._reader.fm_version} holds "
                                         f"codes of width {history.dim}; the model reads {self.width}")
        if self.codec and history.codec_name != self.codec:
            raise FmVersionMismatchError(f"snapshot {served.info.snapshot_id} of {self._reader.fm_version} stores "
                                         f"{history.codec_name} codes; the model was trained on {self.codec}")
        # `served` holds `history`, which holds the descriptor and the arrays its address points at
        bound = self._bound = (served, history.run, history.address, served.info.snapshot_id)
        return bound

    def __call__(self, user_id: int, t_ms: int) -> tuple[np.ndarray, int, str] | None:
        return self.fetch(user_id, t_ms)

    def fetch(self, user_id: int, t_ms: int) -> tuple[np.ndarray, int, str] | None:
        """(codes float32 [1, L, d], rows found before t (0: cold start), snapshot id), or None when a
        refresh switched to a snapshot the served kernel cannot decode (then `reader.lookup` serves)."""
        bound = self._bound
        served = self._reader._served
        if served is not bound[0]:
            bound = self._rebind(served)
            if bound is None:
                return None
        if type(user_id) is not int or type(t_ms) is not int:  # numba would take a bool or a float as an int
            return self._convert(user_id, t_ms)
        _, run, address, snapshot_id = bound
        out = np.empty(self._shape, _FLOAT32)  # fully written by the kernel: rows, prior or zeros
        try:
            n = run(address, user_id, t_ms, out)
        except OverflowError:  # an int beyond int64
            n = _ERR_RANGE
        if n < 0:
            self._refuse(user_id, t_ms, n)
        return out, n, snapshot_id

    def _convert(self, user_id: object, t_ms: object) -> tuple[np.ndarray, int, str] | None:
        """numpy integers (and refusals of everything else), then the call with plain ints."""
        return self(_check_scalar_id(user_id, "user_id", 0), _check_scalar_id(t_ms, "t_ms", 1))

    def _refuse(self, user_id: int, t_ms: int, code: int) -> None:
        _check_scalar_id(user_id, "user_id", 0)
        _check_scalar_id(t_ms, "t_ms", 1)
        raise InvalidLookupError(f"history lookup refused (code {code}) for shape {self._shape}")
