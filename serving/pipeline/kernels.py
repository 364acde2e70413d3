"""Compiled (numba) kernels for the per-candidate work of validate, features and rank: one pass each.

Each stage's numpy reference does a handful of numpy calls over the candidate columns (masks,
reductions, `np.where`, gathers); on a 200-row request every call costs more in dispatch than in
arithmetic, so three stages spent ≈ 50 µs in process on what is ≈ 2 µs of work. A kernel does the same
work in one compiled loop over the rows:

* `candidates_ok` (validate): whether every recent category and id is >= 0, every bid finite and
  within max_bid, and every dense value within ±max_abs_dense_feature. It answers only yes or no: on
  "no" the validate stage runs its numpy checks, which find the offending field and raise the same
  message, naming the same limit, as always (the error path is rare and is not where the time goes);
* `assemble_request` (features): the model's `sparse`, `recent` and `dense` inputs for one request in
  one pass, the same values `models.features.features_for_request` builds (bit for bit: the integer
  clip-and-offset is exact, and `log1p(bid)` is still computed by numpy from the same float32 bids, so
  no libm difference can creep in; tests/unit/serving/test_pipeline_kernels.py checks against training's
  `assemble`);
* `rank_request` (rank): expected value bid × p_ctr × p_cvr in float64 (the same multiplications in the
  same order), the first non-finite candidate (-1: none; on one the rank stage's numpy check raises its
  message), and the stable order by expected value (ties keep request order, as the reference lexsort),
  with the ranked columns gathered.

Outputs are allocated per call (never shared between requests). Compilation happens once per process,
outside requests (`warm`, called when the stages are built; numba's on-disk cache makes later
processes load instead of compile), for the argument types the two wire formats and both backends
hand the kernels; then compilation is switched off, so arguments of any other type (a replayed log's
narrower ints, a strided view) raise `NoCompiledKernel` at once and the stage runs its numpy reference
instead of compiling for a second inside a request. Without numba (ImportError), `KERNELS` is None and
every stage runs its numpy reference.
"""

from __future__ import annotations

import logging
import math
import threading

import numpy as np

log = logging.getLogger(__name__)


def _candidates_ok(recent_categories, ad_id, advertiser_id, campaign_id, category, bid, dense, max_bid,
                   max_abs):  # pragma: no cover
    n = ad_id.shape[0]
    if advertiser_id.shape[0] != n or campaign_id.shape[0] != n or category.shape[0] != n or bid.shape[0] != n:
        return False  # never indexed past an end: the numpy checks decide
    for c in recent_categories:
        if c < 0:
            return False
    for i in range(n):
        if ad_id[i] < 0 or advertiser_id[i] < 0 or campaign_id[i] < 0 or category[i] < 0:
            return False
        b = bid[i]
        if not (math.isfinite(b) and b >= 0.0 and b <= max_bid):
            return False
    for i in range(dense.shape[0]):
        for j in range(dense.shape[1]):
            if not (abs(dense[i, j]) <= max_abs):  # NaN fails too
                return False
    return True


def _clip(value, size, offset):  # pragma: no cover - compiled inline
    return (value if 0 <= value < size else size) + offset


def _assemble_request(ad_id, advertiser_id, campaign_id, category, context, recent_categories, bid, extra,
                      sizes, offsets, recent_offset, n_categories, recent_k, dense_width):  # pragma: no cover
    n = ad_id.shape[0]
    n_fields = sizes.shape[0]
    if (advertiser_id.shape[0] != n or campaign_id.shape[0] != n or category.shape[0] != n or bid.shape[0] != n
            or (extra.shape[1] and extra.shape[0] != n) or context.shape[0] != n_fields - 4
            or offsets.shape[0] != n_fields):
        raise ValueError("assemble_request: columns of different lengths")
    sparse = np.empty((n, n_fields), np.int64)
    # the request-wide fields (placement, device, hour, segment: columns 4..7) are the same for every row
    shared = np.empty(n_fields, np.int64)
    for j in range(4, n_fields):
        shared[j] = _clip(context[j - 4], sizes[j], offsets[j])
    recent_row = np.empty(recent_k, np.int64)
    k = min(recent_k, recent_categories.shape[0])
    for j in range(recent_k):
        c = recent_categories[j] if j < k else -1  # -1: padding, which shares the out-of-range slot
        recent_row[j] = (c if 0 <= c < n_categories else n_categories) + recent_offset
    recent = np.empty((n, recent_k), np.int64)
    dense = np.zeros((n, dense_width), np.float32)
    bid32 = np.empty(n, np.float32)
    e = extra.shape[1]
    for i in range(n):
        sparse[i, 0] = _clip(ad_id[i], sizes[0], offsets[0])
        sparse[i, 1] = _clip(advertiser_id[i], sizes[1], offsets[1])
        sparse[i, 2] = _clip(campaign_id[i], sizes[2], offsets[2])
        sparse[i, 3] = _clip(category[i], sizes[3], offsets[3])
        for j in range(4, n_fields):
            sparse[i, j] = shared[j]
        for j in range(recent_k):
            recent[i, j] = recent_row[j]
        bid32[i] = np.float32(bid[i])
        for j in range(e):
            dense[i, 1 + j] = extra[i, j]
    return sparse, recent, dense, bid32


def _rank_request(ad_id, bid, p_ctr, p_cvr, top_k):  # pragma: no cover
    n = bid.shape[0]
    ev = np.empty(n, np.float64)
    bad = -1
    for i in range(n):
        ev[i] = bid[i] * np.float64(p_ctr[i]) * np.float64(p_cvr[i])
        if bad < 0 and not (math.isfinite(p_ctr[i]) and math.isfinite(p_cvr[i]) and math.isfinite(ev[i])):
            bad = i
    k = n if top_k < 0 or top_k > n else top_k
    order = np.empty(k, np.int64)
    ranked_ad = np.empty(k, np.int64)
    ranked_ctr = np.empty(k, np.float32)
    ranked_cvr = np.empty(k, np.float32)
    ranked_ev = np.empty(k, np.float64)
    if bad >= 0:
        return bad, order, ranked_ad, ranked_ctr, ranked_cvr, ranked_ev, ev
    full = np.argsort(-ev, kind="mergesort")  # stable: equal expected values keep request order
    for r in range(k):
        i = full[r]
        order[r] = i
        ranked_ad[r] = ad_id[i]
        ranked_ctr[r] = p_ctr[i]
        ranked_cvr[r] = p_cvr[i]
        ranked_ev[r] = ev[i]
    return bad, order, ranked_ad, ranked_ctr, ranked_cvr, ranked_ev, ev


class NoCompiledKernel(TypeError):
    """The arguments' types are not among those compiled by `Kernels.warm`: run the numpy reference."""


class Kernels:
    """The three compiled kernels (see the module docstring). Call them through `call`."""

    def __init__(self, numba) -> None:
        jit = numba.njit(cache=True, nogil=True)
        globals()["_clip"] = numba.njit(inline="always")(_clip)  # resolved by the kernel that calls it
        self.candidates_ok = jit(_candidates_ok)
        self.assemble_request = jit(_assemble_request)
        self.rank_request = jit(_rank_request)
        self._warmed = False
        self._lock = threading.Lock()

    def warm(self) -> None:
        """Compiles (or loads from numba's cache) each kernel for the argument types the two wire formats
        hand it: writable arrays (rows) and read-only views of the request's bytes (columns)."""
        with self._lock:
            if self._warmed:
                return
            for readonly in (False, True):
                ints = np.arange(4, dtype=np.int64)
                bid = np.ones(4, np.float64)
                dense = np.zeros((4, 2), np.float32)
                ints_ro, bid_ro, dense_ro = (a.copy() for a in (ints, bid, dense))
                if readonly:
                    for a in (ints_ro, bid_ro, dense_ro):
                        a.flags.writeable = False
                fields = np.arange(8, dtype=np.int64)  # sizes and offsets of the 8 fields
                wide = ints.copy()  # category: widened from int32 on the columns path, so always writable
                for d in (dense_ro, dense):
                    self.candidates_ok(ints, ints_ro, ints_ro, ints_ro, wide, bid_ro, d, 1.0, 1.0)
                    self.assemble_request(ints_ro, ints_ro, ints_ro, wide, ints, ints, bid_ro, d, fields, fields,
                                          0, 1, 2, 3)
                p = np.ones(4, np.float32)
                p_ro = p.copy()
                p_ro.flags.writeable = False  # Triton's scores are views of its response bytes
                for scores in (p, p_ro):
                    self.rank_request(ints_ro, bid_ro, scores, scores, -1)
            for kernel in (self.candidates_ok, self.assemble_request, self.rank_request):
                kernel.disable_compile()  # from here on, only the types compiled above
            self._warmed = True

    def call(self, kernel, *args):
        """`kernel(*args)`; NoCompiledKernel when no compiled version takes these argument types."""
        if not self._warmed:  # a caller outside the stages (a test, a tool) before any stage was built
            self.warm()
        try:
            return kernel(*args)
        except TypeError as exc:  # numba's dispatcher: "No matching definition for argument type(s) ..."
            raise NoCompiledKernel(str(exc)) from None


def _load() -> Kernels | None:
    try:
        import numba
    except ImportError:
        log.info("numba is not installed: the request pipeline runs its numpy reference code")
        return None
    return Kernels(numba)


KERNELS: Kernels | None = _load()
"""The compiled kernels, or None without numba (stages then run their numpy references)."""
