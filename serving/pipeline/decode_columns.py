"""Stage 1, decode, for ScoreColumns: wire bytes (or a parsed ScoreColumnsRequest) → DecodedRequest.

The columnar twin of `decode_rows`: candidate fields arrive as `adrank.v1.Column` blocks (a declared
dtype and length over little-endian bytes), which become numpy views of the message's bytes with
`np.frombuffer` — no per-candidate work. What only columns can get wrong is refused here, naming the
field: a dtype other than the field's, a byte count that is not length × the dtype's size, columns of
different lengths. Everything else (counts, ids, bids, dense values, model, time) is checked by the
validate stage, so rows and columns are refused with the same messages and limits.

Views are read-only and stay valid while the request's bytes live (the decoded request holds them);
the one column whose row field is narrower than the pipeline's arrays (category, int32) is widened.
"""

from __future__ import annotations

import numpy as np

from protos.adrank.v1 import ranking_pb2
from serving.columns import CANDIDATE_COLUMNS, DTYPES, column_view
from serving.errors import InvalidRequest
from serving.pipeline.values import DecodedRequest
from serving.pipeline.wire import parse_message

SCORE_COLUMNS_METHOD = "/adrank.v1.AdRanking/ScoreColumns"
_NO_INTS = np.zeros(0, np.int64)
_NO_FLOATS = np.zeros(0, np.float64)
_NO_DENSE = np.zeros((0, 0), np.float32)


class ColumnsPayload(bytes):
    """The raw body of a ScoreColumns call: bytes, marked so the decode stage reads it as columns."""

    __slots__ = ()


def parse_columns_wire(payload: bytes | ranking_pb2.ScoreColumnsRequest) -> ranking_pb2.ScoreColumnsRequest:
    """The ScoreColumnsRequest in `payload`; InvalidRequest when the bytes are not one."""
    return parse_message(payload, ranking_pb2.ScoreColumnsRequest, SCORE_COLUMNS_METHOD)


_I64, _I32, _F64, _F32 = (ranking_pb2.DTYPE_INT64, ranking_pb2.DTYPE_INT32, ranking_pb2.DTYPE_FLOAT64,
                          ranking_pb2.DTYPE_FLOAT32)
if tuple(name for name, _ in CANDIDATE_COLUMNS) != ("ad_id", "advertiser_id", "campaign_id", "category", "bid"):
    raise ImportError("decode_columns reads the candidate columns in CANDIDATE_COLUMNS' order")


def _column(column: ranking_pb2.Column, n: int, name: str, dtype: int) -> np.ndarray:
    """The candidate column `name` as a view; InvalidRequest naming it when its length is not `n` (checked
    first) or its dtype or byte count is wrong (`column_view`'s messages)."""
    np_dtype = DTYPES[dtype]
    data = column.data
    if column.dtype == dtype and column.length == n and len(data) == n * np_dtype.itemsize:  # the common case
        return np.frombuffer(data, dtype=np_dtype)
    if column.length != n:
        raise InvalidRequest(f"candidates.{name}: length {column.length} differs from candidates.ad_id "
                             f"length {n} (one value per candidate)")
    return column_view(column, f"candidates.{name}", dtype)


def decode_columns(req: ranking_pb2.ScoreColumnsRequest, *, max_candidates: int,
                   max_dense_features: int) -> DecodedRequest:
    """The columnar request as arrays. Columns are read only when there are 1..`max_candidates`
    candidates (the ad_id column's length) and the dense matrix only when it is no wider than
    `max_dense_features`, as `decode_rows` does, so a hostile request costs no more than its refusal.
    Columns are checked in CANDIDATE_COLUMNS' order, each for its length, dtype, then byte count."""
    cols = req.candidates
    n = cols.ad_id.length
    ctx = req.context
    recent = np.fromiter(req.user.recent_categories, dtype=np.int64, count=len(req.user.recent_categories))
    ad_id = advertiser = campaign = category = widths = _NO_INTS
    bid, width = _NO_FLOATS, int(cols.dense_width)
    dense = _NO_DENSE
    if 0 < n <= max_candidates:
        ad_id = _column(cols.ad_id, n, "ad_id", _I64)
        advertiser = _column(cols.advertiser_id, n, "advertiser_id", _I64)
        campaign = _column(cols.campaign_id, n, "campaign_id", _I64)
        category = _column(cols.category, n, "category", _I32).astype(np.int64)
        bid = _column(cols.bid, n, "bid", _F64)
        widths = np.full(n, width, np.int64)
        has_dense = cols.HasField("dense_features")
        if has_dense != (width > 0):
            raise InvalidRequest("candidates.dense_features: dense_width and dense_features go together "
                                 f"(dense_width {width}, dense_features {'set' if has_dense else 'absent'})")
        if width == 0:
            dense = np.zeros((n, 0), dtype=np.float32)
        elif width <= max_dense_features:
            if cols.dense_features.length != n * width:
                raise InvalidRequest(f"candidates.dense_features: length {cols.dense_features.length} is not "
                                     f"{n} candidates × dense_width {width}")
            flat = column_view(cols.dense_features, "candidates.dense_features", _F32)
            dense = flat.reshape(n, width)
    return DecodedRequest(
        request_id=req.request_id, user_id=req.user_id,
        request_time_ms=req.request_time_ms if req.HasField("request_time_ms") else None,
        placement=ctx.placement, device=ctx.device,
        hour_of_day=ctx.hour_of_day if ctx.HasField("hour_of_day") else None,
        segment=req.user.segment, recent_categories=recent, n_candidates=n,
        ad_id=ad_id, advertiser_id=advertiser, campaign_id=campaign, category=category, bid=bid,
        dense_widths=widths, dense_width=width if n else 0, dense=dense, model_name=req.model.name,
        model_version=req.model.version if req.model.HasField("version") else None,
        top_k=req.top_k if req.HasField("top_k") else None,
    )
