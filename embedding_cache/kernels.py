"""Fused numba kernels for one request's lookup over one snapshot's CSR arrays.

One compiled call does what `csr.user_history_one` + `csr.ad_codes` do in about ten numpy calls: it finds
the user's row range, binary-searches t in the user's timestamps, copies the L most recent rows (newest
first), then for every candidate ad finds its row and copies it, dequantizing int8 or int4 on the way. Nothing runs
per row in Python.

    kernel = RequestKernel.for_snapshot(data)          # None when numba is missing or switched off
    history, timestamps, n_found, newest_ms, ads, hit, n_hit, first_negative = kernel.lookup(
        user_id, t, max_len, ad_ids)

Ids are found through an `IdIndex` built once per snapshot: dense ids (min..max all present) are their own
row numbers; other ids go through a radix index of bucket starts, so a lookup is one or two probes instead of
a ~20-step binary search whose misses cannot overlap.

The serving path calls a second, narrower kernel (`_served_history`, through served_history.HistoryLookup):
one user's rows strictly before t decoded straight into the model's float32 [1, L, d] input, the prior
for a cold user, and the reader's counters, with no ads. Its arguments are three ints and the output:
the snapshot's arrays travel as addresses in a per-snapshot descriptor (`ServedHistory`, which keeps them
alive), because numba unboxes every array argument on every call (1.3 us for RequestKernel's tuple of
arrays, as long as the search and decode themselves).

The numpy path in csr.py stays the reference and the fallback: the kernel's results are bit-identical to it
(the same float32 multiply per value; tests/unit/embedding_cache/test_cache_kernels.py checks every codec).
numba is optional: without it (or with ADRANK_CACHE_KERNEL=numpy) readers use the numpy path.

Compilation happens when the first reader opens (`ensure_compiled`: a compile, or a load from numba's
on-disk cache), never inside a request: the kernel has exactly two signatures (float32 outputs, with int8
or int4 decoded in the kernel; raw bytes for the other codecs) over read-only C-contiguous snapshot arrays, and further
compilation is disabled, so an argument of another layout is a TypeError that `lookup` answers by copying
the argument, not by compiling.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import NamedTuple

import numpy as np

from embedding_cache.codecs import Float32Codec, Int4Codec, Int8Codec
from embedding_cache.metrics import K_BUCKETS, K_FALLBACKS, K_HITS, K_LOOKUPS, K_STALE_SUM
from embedding_cache.snapshot_data import SnapshotData

log = logging.getLogger(__name__)

ENV_SWITCH = "ADRANK_CACHE_KERNEL"  # "numpy" forces the numpy path; anything else: numba when importable
MODE_INT8 = 0  # fused int8 dequantization: outputs are float32
MODE_RAW = 1  # raw byte copy: outputs are uint8 rows that the codec decodes afterwards
MODE_INT4 = 2  # fused int4 unpacking (two codes per byte, step 1/8): outputs are float32


_HELPERS: list = []  # plain functions the kernel calls; compiled inline with it (see ensure_compiled)


def _kernel_helper(fn):
    _HELPERS.append(fn.__name__)
    return fn


@_kernel_helper
def _first_at_or_after(ts, a, b, t):
    """First row in [a, b) of the sorted `ts` with ts >= t (b if none): the rows before it are strictly before t."""
    while a < b:
        mid = (a + b) >> 1
        if ts[mid] < t:
            a = mid + 1
        else:
            b = mid
    return a


@_kernel_helper
def _find(keys, starts, low, shift, dense, key):
    """Row of `key` in the sorted unique `keys` (an IdIndex over them: starts, low, shift, dense), or -1."""
    if key < low:
        return -1
    offset = key - low
    if dense:
        return offset if offset < keys.shape[0] else -1
    bucket = offset >> shift
    if bucket >= starts.shape[0] - 1:
        return -1
    lo, hi = starts[bucket], starts[bucket + 1]
    end = hi
    while lo < hi:
        mid = (lo + hi) >> 1
        if keys[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo if lo < end and keys[lo] == key else -1


@_kernel_helper
def _find_many(keys, starts, low, shift, dense, req, rows):
    """rows[i] = _find(..., req[i]) for every i, in passes whose memory accesses overlap.

    One search at a time is a chain of dependent cache misses behind mispredicted branches; here the bucket
    bounds of all ids are loaded first (independent loads, no data-dependent branch), then each bucket is
    searched with a branchless lower bound (measured 4.0 -> 1.8 us for 200 sparse ids among 100k).
    """
    n = req.shape[0]
    n_keys = keys.shape[0]
    if dense:
        for i in range(n):
            offset = req[i] - low
            rows[i] = offset if 0 <= offset < n_keys else -1
        return
    n_buckets = starts.shape[0] - 1
    ends = np.empty(n, np.int64)
    for i in range(n):
        offset = req[i] - low
        bucket = offset >> shift
        inside = (offset >= 0) & (bucket < n_buckets)
        bucket = bucket if inside else 0
        lo, hi = starts[bucket], starts[bucket + 1]
        rows[i] = lo
        ends[i] = hi if inside else lo
    for i in range(n):
        lo, end, key = rows[i], ends[i], req[i]
        length = end - lo
        if length == 0:
            rows[i] = -1
            continue
        while length > 1:  # the first index >= key stays in [lo, lo + length]
            half = length >> 1
            lo = lo + half if keys[lo + half - 1] < key else lo
            length -= half
        lo = lo + 1 if keys[lo] < key else lo
        rows[i] = lo if lo < end and keys[lo] == key else -1


def _lookup_request(snapshot, user_id, t, req_ads, out_hist, out_ts, out_ads, out_hit, out_meta):
    """Fill one request's outputs (the function numba compiles).

    `snapshot` is RequestKernel's tuple of arrays (one argument dispatches faster than thirteen).
    out_hist [1, L, w] and out_ts [1, L] must be zeroed by the caller (padding); out_ads [N, w] and
    out_hit [N] are fully written here (misses are zero rows). out_meta [4] receives: rows found before t
    (at most L), ads hit, the index of the first negative ad id (-1 when none), the newest timestamp used.
    """
    (user_ids, u_starts, u_low, u_shift, u_dense, offsets, ts, codes, scales,
     ad_ids, a_starts, a_low, a_shift, a_dense, ad_codes, ad_scales, mode) = snapshot
    max_len = out_ts.shape[1]
    width = codes.shape[1]
    n_found = 0
    u = _find(user_ids, u_starts, u_low, u_shift, u_dense, user_id)
    if u >= 0:
        start = offsets[u]
        a = _first_at_or_after(ts, start, offsets[u + 1], t)
        n_found = min(a - start, max_len)
        for j in range(n_found):
            row = a - 1 - j  # most recent first; on equal timestamps the later append counts as newer
            out_ts[0, j] = ts[row]
            if mode == MODE_INT8:
                sc = scales[row]
                for k in range(width):
                    out_hist[0, j, k] = np.float32(np.int8(codes[row, k])) * sc
            elif mode == MODE_INT4:  # low nibble first, (q - 8) / 8: exact in float32, as Int4Codec.decode
                for k in range(width):
                    c = np.int64(codes[row, k])
                    out_hist[0, j, 2 * k] = np.float32(((c & 15) - 8) * 0.125)
                    out_hist[0, j, 2 * k + 1] = np.float32(((c >> 4) - 8) * 0.125)
            else:
                for k in range(width):
                    out_hist[0, j, k] = codes[row, k]
    # Ads in two passes, all rows found first, then copied: fused, the search's branches kept the copy loop
    # from being optimized (measured 2x slower).
    n_ads = req_ads.shape[0]
    rows = np.empty(n_ads, np.int64)
    _find_many(ad_ids, a_starts, a_low, a_shift, a_dense, req_ads, rows)
    bad = -1
    for i in range(n_ads):
        if req_ads[i] < 0:
            bad = i
            break
    hits = 0
    for i in range(n_ads):
        row = rows[i]
        if row >= 0:
            out_hit[i] = True
            hits += 1
            if mode == MODE_INT8:
                sc = ad_scales[row]
                for k in range(width):
                    out_ads[i, k] = np.float32(np.int8(ad_codes[row, k])) * sc
            elif mode == MODE_INT4:
                for k in range(width):
                    c = np.int64(ad_codes[row, k])
                    out_ads[i, 2 * k] = np.float32(((c & 15) - 8) * 0.125)
                    out_ads[i, 2 * k + 1] = np.float32(((c >> 4) - 8) * 0.125)
            else:
                for k in range(width):
                    out_ads[i, k] = ad_codes[row, k]
        else:
            out_hit[i] = False
            for k in range(out_ads.shape[1]):
                out_ads[i, k] = 0
    out_meta[0] = n_found
    out_meta[1] = hits
    out_meta[2] = bad
    out_meta[3] = out_ts[0, 0]


MODE_FLOAT32 = 3  # served kernel only: raw float32 rows copied as float32

# Layout of a served-history descriptor (`ServedHistory`): addresses and sizes of one snapshot's arrays,
# so the compiled call receives one small int64 array instead of a tuple of snapshot arrays (numba unboxes
# every array argument on every call: 1.3 us for the seventeen-field tuple, 0.2 us for this).
(D_USER_IDS, D_N_USERS, D_U_STARTS, D_N_STARTS, D_U_LOW, D_U_SHIFT, D_U_DENSE, D_OFFSETS, D_TS, D_CODES,
 D_N_ROWS, D_BPR, D_SCALES, D_DIM, D_MODE, D_PRIOR, D_STATS, D_BOUNDS, D_N_BOUNDS, D_ROW_BYTES, D_SINK,
 D_SIZE) = range(22)
# Counters the served kernel adds to: CacheMetrics.kernel_counts, in the layout metrics.py defines
S_LOOKUPS, S_HITS, S_FALLBACKS, S_STALE_SUM, S_BUCKETS = K_LOOKUPS, K_HITS, K_FALLBACKS, K_STALE_SUM, K_BUCKETS
ERR_USER_ID, ERR_T, ERR_SHAPE = -1, -2, -3  # the served kernel's refusals (see served_history.HistoryLookup)
# numba.carray and an int -> void* intrinsic; ensure_compiled binds them before it compiles the served kernel
_address = _carray = None


def _served_history(desc_address, user_id, t, out):
    """One request's FM history decoded straight into the model's input `out` float32 [1, L, width].

    `desc_address` is the address of a ServedHistory's descriptor (an int unboxes faster than an array).

    Rows strictly before t, newest first, the first `width` dims of each; rows past the user's history
    are zero; a user without any row before t gets the snapshot's prior in row 0. Returns the number of
    rows found (0: cold start) or a negative ERR_* code, and counts the lookup in the reader's counters.
    Compiled without nogil: holding the GIL keeps the counter updates whole against other threads.
    """
    if user_id < 0:
        return ERR_USER_ID
    if t <= 0:
        return ERR_T
    desc = _carray(_address(desc_address), (D_SIZE,), np.int64)
    max_len = out.shape[1]
    width = out.shape[2]
    dim = desc[D_DIM]
    if out.shape[0] != 1 or width > dim:
        return ERR_SHAPE
    n_users = desc[D_N_USERS]
    n_rows = desc[D_N_ROWS]
    user_ids = _carray(_address(desc[D_USER_IDS]), (n_users,), np.int64)
    starts = _carray(_address(desc[D_U_STARTS]), (desc[D_N_STARTS],), np.int64)
    offsets = _carray(_address(desc[D_OFFSETS]), (n_users + 1,), np.int64)
    ts = _carray(_address(desc[D_TS]), (n_rows,), np.int64)
    stats = _carray(_address(desc[D_STATS]), (S_BUCKETS + desc[D_N_BOUNDS] + 1,), np.int64)
    mode = desc[D_MODE]
    n_found = 0
    newest = 0
    u = _find(user_ids, starts, desc[D_U_LOW], desc[D_U_SHIFT], desc[D_U_DENSE] != 0, user_id)
    if u >= 0:
        start = offsets[u]
        a, b = start, offsets[u + 1]
        if a < b and ts[b - 1] < t:  # the usual request, after all of the user's rows: no search, and a
            a = b                    # predictable branch, so the rows' loads start before ts[b - 1] arrives
            newest = ts[b - 1]
        else:
            a = _first_at_or_after(ts, a, b, t)
            if a > start:
                newest = ts[a - 1]
        n_found = min(a - start, max_len)
        # Touch every cache line of the rows first: independent loads the CPU overlaps, where the decode
        # loop alone reaches each line only after decoding the one before (32 int4 rows among 200k users:
        # about 0.1 us of a 0.75 us call, on a shared 2-core machine).
        lo = (a - n_found) * desc[D_ROW_BYTES]
        hi = a * desc[D_ROW_BYTES]
        raw = _carray(_address(desc[D_CODES]), (n_rows * desc[D_ROW_BYTES],), np.uint8)
        sink = 0
        for i in range(lo, hi, 64):
            sink += raw[i]
        if hi > lo:
            sink += raw[hi - 1]  # the last line, when the rows do not start on a line boundary
            if mode == MODE_INT8:
                scales = _carray(_address(desc[D_SCALES]), (n_rows,), np.float32)
                for i in range(a - n_found, a, 16):
                    sink += np.int64(scales[i] > 0)
        desc[D_SINK] = sink
        if mode == MODE_INT4:
            codes = _carray(_address(desc[D_CODES]), (n_rows, desc[D_BPR]), np.uint8)
            pairs = width >> 1
            for j in range(n_found):
                row = a - 1 - j  # most recent first; on equal timestamps the later append counts as newer
                for k in range(pairs):  # low nibble first, (q - 8) / 8: exact in float32, as Int4Codec.decode
                    c = np.int64(codes[row, k])
                    out[0, j, 2 * k] = np.float32(((c & 15) - 8) * 0.125)
                    out[0, j, 2 * k + 1] = np.float32(((c >> 4) - 8) * 0.125)
                if width & 1:
                    c = np.int64(codes[row, pairs])
                    out[0, j, width - 1] = np.float32(((c & 15) - 8) * 0.125)
        elif mode == MODE_INT8:
            codes = _carray(_address(desc[D_CODES]), (n_rows, desc[D_BPR]), np.uint8)
            scales = _carray(_address(desc[D_SCALES]), (n_rows,), np.float32)
            for j in range(n_found):
                row = a - 1 - j
                sc = scales[row]
                for k in range(width):
                    out[0, j, k] = np.float32(np.int8(codes[row, k])) * sc
        else:  # MODE_FLOAT32
            rows = _carray(_address(desc[D_CODES]), (n_rows, dim), np.float32)
            for j in range(n_found):
                row = a - 1 - j
                for k in range(width):
                    out[0, j, k] = rows[row, k]
    first_pad = n_found
    if n_found == 0:  # cold start: the population prior as the one entry
        prior = _carray(_address(desc[D_PRIOR]), (dim,), np.float32)
        for k in range(width):
            out[0, 0, k] = prior[k]
        first_pad = 1
    for j in range(first_pad, max_len):
        for k in range(width):
            out[0, j, k] = 0
    stats[S_LOOKUPS] += 1
    if n_found:
        stale = t - newest
        stats[S_HITS] += 1
        stats[S_STALE_SUM] += stale
        bounds = _carray(_address(desc[D_BOUNDS]), (desc[D_N_BOUNDS],), np.int64)
        bucket = 0  # bisect_left: the first bound >= stale
        while bucket < bounds.shape[0] and bounds[bucket] < stale:
            bucket += 1
        stats[S_BUCKETS + bucket] += 1
    else:
        stats[S_FALLBACKS] += 1
    return n_found


_lock = threading.Lock()
_compiled = None  # the numba dispatcher once compiled; False when numba is unavailable
_served = None  # the served-history dispatcher, compiled with it


def _signatures() -> list[tuple]:
    from numba import types

    def ro(dtype, ndim: int) -> types.Array:
        return types.Array(dtype, ndim, "C", readonly=True)

    def rw(dtype, ndim: int) -> types.Array:
        return types.Array(dtype, ndim, "C")

    i64, f32, u8, flag = types.int64, types.float32, types.uint8, types.boolean
    index = (ro(i64, 1), ro(i64, 1), i64, i64, flag)
    rows = (ro(u8, 2), ro(f32, 1))
    snapshot = types.Tuple((*index, ro(i64, 1), ro(i64, 1), *rows, *index, *rows, i64))
    request = (snapshot, i64, i64, ro(i64, 1))
    return [(*request, rw(f32, 3), rw(i64, 2), rw(f32, 2), rw(flag, 1), rw(i64, 1)),
            (*request, rw(u8, 3), rw(i64, 2), rw(u8, 2), rw(flag, 1), rw(i64, 1))]


def ensure_compiled():
    """The compiled kernel (compiled, or loaded from numba's cache, once per process), or None.

    None when numba is not importable or ADRANK_CACHE_KERNEL=numpy. Readers call it when they open. The
    served-history kernel is compiled with it (`_served`; None if that compile failed, logged).
    """
    global _compiled, _served
    if os.environ.get(ENV_SWITCH, "").lower() == "numpy":
        return None
    if _compiled is None:
        with _lock:
            if _compiled is None:
                try:
                    import numba
                except ImportError:
                    log.info("numba is not installed: the embedding cache serves lookups with numpy")
                    _compiled = False
                    return None
                # The kernel calls its helpers through this module's globals, which numba resolves when it
                # compiles: swap each for its compiled version first (they stay callable from Python).
                for name in _HELPERS:
                    globals()[name] = numba.njit(inline="always")(globals()[name])
                dispatcher = numba.njit(nogil=True, cache=True)(_lookup_request)
                for sig in _signatures():
                    dispatcher.compile(sig)
                dispatcher.disable_compile()  # never compile inside a request
                try:
                    globals()["_address"], globals()["_carray"] = _address_intrinsic(), numba.carray
                    served = numba.njit(nogil=False, cache=True)(_served_history)
                    served.compile(_served_signature())
                    served.disable_compile()
                    _served = served
                except Exception as exc:  # noqa: BLE001 - the generic lookup still serves, bit for bit the same
                    log.warning("the served-history kernel did not compile (%s): serving uses reader.lookup", exc)
                _compiled = dispatcher  # last: a reader that sees it compiled sees the served kernel too
    return _compiled or None


def _served_signature() -> tuple:
    from numba import types

    return (types.int64, types.int64, types.int64, types.Array(types.float32, 3, "C"))


def _address_intrinsic():
    """int64 -> void*: the served kernel views snapshot arrays from the addresses in its descriptor."""
    from numba import types
    from numba.core.extending import intrinsic

    @intrinsic
    def address(typingctx, value):  # noqa: ARG001 - numba's intrinsic signature
        if not isinstance(value, types.Integer):
            return None

        def codegen(context, builder, signature, args):  # noqa: ARG001
            return builder.inttoptr(args[0], context.get_value_type(types.voidptr))

        return types.voidptr(value), codegen

    return address


def _readonly(arr: np.ndarray, dtype: type) -> np.ndarray:
    """A read-only, aligned, C-contiguous view (or copy) of the exact type the kernel was compiled for."""
    arr = np.asarray(arr)
    if arr.dtype != dtype or not arr.flags.c_contiguous or not arr.flags.aligned:
        arr = np.array(arr, dtype=dtype, order="C")
    view = arr.view()
    view.flags.writeable = False
    return view


class IdIndex(NamedTuple):
    """How the kernel finds an id among sorted unique ids (see `_find`).

    Dense ids (every id from min to max present, as when ids number a catalog) need no table: id - min is
    the row. Otherwise `starts[b]` is the first row whose (id - low) >> shift >= b; there are about two
    buckets per id (16 bytes per id, in process memory), so uniformly spread ids (hashes, random ids) need
    one or two probes, and skewed ids fall back to a binary search inside their bucket, never slower than a
    binary search over all ids.
    """

    starts: np.ndarray
    low: int
    shift: int
    dense: bool

    @classmethod
    def build(cls, keys: np.ndarray) -> IdIndex:
        n = len(keys)
        if n == 0:
            return cls(np.zeros(2, np.int64), 0, 0, False)
        low = int(keys[0])
        span = int(keys[-1]) - low
        if span == n - 1:
            return cls(np.zeros(2, np.int64), low, 0, True)
        shift = max(0, span.bit_length() - (n.bit_length() + 1))
        n_buckets = (span >> shift) + 1
        counts = np.bincount((np.asarray(keys, np.int64) - low) >> shift, minlength=n_buckets)
        starts = np.zeros(n_buckets + 1, np.int64)
        np.cumsum(counts, out=starts[1:])
        return cls(starts, low, shift, False)

    def args(self, keys: np.ndarray) -> tuple:
        return (_readonly(keys, np.int64), _readonly(self.starts, np.int64), self.low, self.shift,
                self.dense)


class RequestKernel:
    """The fused lookup bound to one snapshot's arrays; built once per snapshot (open or refresh)."""

    def __init__(self, dispatcher, data: SnapshotData) -> None:
        codec = data.codec
        self._run = dispatcher
        self._codec = codec
        self._dim = data.dim
        self._mode = MODE_INT8 if isinstance(codec, Int8Codec) else MODE_INT4 if isinstance(codec, Int4Codec) \
            else MODE_RAW
        self._width = codec.bytes_per_row if self._mode == MODE_RAW else data.dim
        self._out_dtype = np.uint8 if self._mode == MODE_RAW else np.float32
        self._float32 = isinstance(codec, Float32Codec)  # raw float32 bytes need no decoding
        bpr = codec.bytes_per_row
        self._snapshot = (
            *IdIndex.build(data.user_ids).args(data.user_ids),
            _readonly(data.offsets, np.int64), _readonly(data.ts, np.int64),
            _readonly(data.codes, np.uint8).reshape(-1, bpr), _readonly(data.scales, np.float32),
            *IdIndex.build(data.ad_ids).args(data.ad_ids),
            _readonly(data.ad_codes, np.uint8).reshape(-1, bpr), _readonly(data.ad_scales, np.float32),
            self._mode,
        )

    @classmethod
    def for_snapshot(cls, data: SnapshotData) -> RequestKernel | None:
        """The kernel for `data`, or None when the numpy path must serve (no numba, or switched off)."""
        dispatcher = ensure_compiled()
        return None if dispatcher is None else cls(dispatcher, data)

    def lookup(self, user_id: int, t: int, max_len: int, ad_ids: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, int, int, np.ndarray, np.ndarray, int, int]:
        """One request: `ad_ids` is int64 [N], validated by the reader except for negatives, reported here.

        Returns a plain tuple (a NamedTuple costs ~0.5 us here, 5% of a lookup):
            history float32 [1, L, dim] zero padded, timestamps int64 [1, L] zero padded,
            n_found (rows with ts < t returned; 0: the reader fills the cold-start prior),
            newest_ms (timestamp of the newest row returned, 0 when none),
            ads float32 [N, dim] with zero rows for misses, hit bool [N], n_hit,
            first_negative (index of the first ad id < 0, or -1).
        """
        width, dtype, n_ads = self._width, self._out_dtype, len(ad_ids)
        hist = np.zeros((1, max_len, width), dtype)
        stamps = np.zeros((1, max_len), np.int64)
        ads = np.empty((n_ads, width), dtype)
        hit = np.empty(n_ads, np.bool_)
        meta = np.empty(4, np.int64)
        try:
            self._run(self._snapshot, user_id, t, ad_ids, hist, stamps, ads, hit, meta)
        except TypeError:  # strided or misaligned ids: copy them to the one layout the kernel was compiled for
            self._run(self._snapshot, user_id, t, np.array(ad_ids, np.int64), hist, stamps, ads, hit, meta)
        n_found, n_hit, first_negative, newest_ms = meta.tolist()
        if self._mode == MODE_RAW:
            hist, ads = self._decode(hist, n_found, ads, hit, n_hit)
        return hist, stamps, n_found, newest_ms, ads, hit, n_hit, first_negative

    def _decode(self, raw_hist: np.ndarray, n_found: int, raw_ads: np.ndarray, hit: np.ndarray, n_hit: int
                ) -> tuple[np.ndarray, np.ndarray]:
        """Raw rows -> float32 exactly as csr.py decodes them (padding and misses stay zero)."""
        dim, codec = self._dim, self._codec
        if self._float32:  # zero bytes are 0.0f, so padding and misses are already right
            return raw_hist.view(np.float32), raw_ads.view(np.float32)
        hist = np.zeros((1, raw_hist.shape[1], dim), np.float32)
        if n_found:
            hist[0, :n_found] = codec.decode(raw_hist[0, :n_found], _NO_SCALES)
        if n_hit == len(hit):
            return hist, codec.decode(raw_ads, _NO_SCALES)
        ads = np.zeros((len(hit), dim), np.float32)
        if n_hit:
            ads[hit] = codec.decode(raw_ads[hit], _NO_SCALES)
        return hist, ads


_NO_SCALES = np.zeros(0, np.float32)


class ServedHistory:
    """The served-path lookup of one snapshot: `run(address, user_id, t, out)` decodes a user's history
    straight into the model's float32 [1, L, width] input (see `_served_history`).

    The descriptor `desc` holds the addresses of the snapshot's arrays, and `address` is the descriptor's
    own; this object keeps references to the descriptor and to every array it points at (and to the
    counters), so whoever holds it while calling `run` keeps them all alive. It is built once per
    snapshot, for int8, int4 and float32 codes (other codecs serve through `lookup`).
    """

    __slots__ = ("run", "desc", "address", "dim", "codec_name", "_keep")

    def __init__(self, run, desc: np.ndarray, dim: int, codec_name: str, keep: tuple) -> None:
        self.run, self.desc, self.dim, self.codec_name, self._keep = run, desc, dim, codec_name, keep
        self.address = int(desc.ctypes.data)

    @classmethod
    def for_kernel(cls, kernel: RequestKernel, prior: np.ndarray, stats: np.ndarray,
                   bounds: np.ndarray) -> ServedHistory | None:
        """The served lookup over `kernel`'s snapshot arrays, adding to `stats` (int64, C-contiguous, at
        least S_BUCKETS + len(bounds) + 1 long); None for codecs it does not decode."""
        if _served is None or kernel._run is not _compiled:
            return None
        mode = kernel._mode if kernel._mode != MODE_RAW else MODE_FLOAT32 if kernel._float32 else None
        (user_ids, u_starts, u_low, u_shift, u_dense, offsets, ts, codes, scales, *_) = kernel._snapshot
        if mode is None or (mode == MODE_FLOAT32 and codes.ctypes.data % 4):
            return None
        prior = _readonly(np.asarray(prior, np.float32).reshape(-1), np.float32)
        bounds = _readonly(bounds, np.int64)
        if len(prior) != kernel._dim or stats.dtype != np.int64 or not stats.flags.c_contiguous \
                or not stats.flags.writeable or len(stats) < S_BUCKETS + len(bounds) + 1:
            raise ValueError("ServedHistory: prior must hold dim floats and stats the counters of every bucket")
        desc = np.zeros(D_SIZE, np.int64)
        desc[D_USER_IDS], desc[D_N_USERS] = user_ids.ctypes.data, len(user_ids)
        desc[D_U_STARTS], desc[D_N_STARTS] = u_starts.ctypes.data, len(u_starts)
        desc[D_U_LOW], desc[D_U_SHIFT], desc[D_U_DENSE] = u_low, u_shift, int(u_dense)
        if len(offsets) != len(user_ids) + 1 or len(ts) != len(codes) or (len(scales) and len(scales) != len(codes)):
            raise ValueError("ServedHistory: the snapshot's offsets, timestamps, codes and scales disagree")
        if mode == MODE_INT8 and len(scales) != len(codes):
            raise ValueError("ServedHistory: int8 codes need one scale per row")
        desc[D_OFFSETS], desc[D_TS], desc[D_N_ROWS] = offsets.ctypes.data, ts.ctypes.data, len(ts)
        desc[D_CODES], desc[D_BPR], desc[D_ROW_BYTES] = codes.ctypes.data, codes.shape[1], codes.strides[0]
        desc[D_SCALES] = scales.ctypes.data
        desc[D_DIM], desc[D_MODE] = kernel._dim, mode
        desc[D_PRIOR], desc[D_STATS] = prior.ctypes.data, stats.ctypes.data
        desc[D_BOUNDS], desc[D_N_BOUNDS] = bounds.ctypes.data, len(bounds)
        keep = (user_ids, u_starts, offsets, ts, codes, scales, prior, stats, bounds)
        return cls(_served, desc, kernel._dim, kernel._codec.name, keep)

