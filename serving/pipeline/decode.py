"""Stage 1, decode: wire bytes (or an already parsed ScoreRequest) → DecodedRequest.

The only stage besides encode that touches protobuf. The servicer registers Score with raw bytes, so
parsing happens here: an undecodable body is INVALID_ARGUMENT with a short message instead of an
error from inside the framework, and its cost shows up as this stage's time. In-process callers
(benches, tests, another transport) may hand a message instead; it is used as is. A ScoreColumns
body (`ColumnsPayload`, or a ScoreColumnsRequest) is read by `decode_columns` into the same
DecodedRequest, and the context records `wire = "columns"` so encode answers in columns.

One pass over the candidate messages builds the id and bid columns (attribute access is the cost);
the dense matrix is built only when a row carries dense features.
"""

from __future__ import annotations

import numpy as np

from protos.adrank.v1 import ranking_pb2
from serving.config import ServerConfig
from serving.pipeline.context import RequestContext
from serving.pipeline.decode_columns import ColumnsPayload, decode_columns, parse_columns_wire
from serving.pipeline.values import DecodedRequest
from serving.pipeline.wire import parse_message

ScorePayload = bytes | ranking_pb2.ScoreRequest | ColumnsPayload | ranking_pb2.ScoreColumnsRequest

SCORE_METHOD = "/adrank.v1.AdRanking/Score"
_NO_INTS = np.zeros(0, np.int64)
_NO_FLOATS = np.zeros(0, np.float64)
_NO_DENSE = np.zeros((0, 0), np.float32)


def parse_wire(payload: ScorePayload) -> ranking_pb2.ScoreRequest:
    """The ScoreRequest in `payload`; InvalidRequest when the bytes are not one."""
    return parse_message(payload, ranking_pb2.ScoreRequest, SCORE_METHOD)


def decode_rows(req: ranking_pb2.ScoreRequest, *, max_candidates: int, max_dense_features: int) -> DecodedRequest:
    """The row-wise request as arrays. Candidates are read only when there are 1..`max_candidates`
    of them and the dense matrix only when no row is wider than `max_dense_features`, so a hostile
    request costs no more than its refusal."""
    n = len(req.candidates)
    ctx = req.context
    recent = np.fromiter(req.user.recent_categories, dtype=np.int64, count=len(req.user.recent_categories))
    ad_id = advertiser = campaign = category = widths = _NO_INTS
    bid, dense, width = _NO_FLOATS, _NO_DENSE, 0
    if 0 < n <= max_candidates:
        cands = req.candidates
        ints = np.array([(c.ad_id, c.advertiser_id, c.campaign_id, c.category, len(c.dense_features))
                         for c in cands], dtype=np.int64)
        bid = np.array([c.bid for c in cands], dtype=np.float64)
        ad_id, advertiser, campaign, category, widths = (np.ascontiguousarray(ints[:, j]) for j in range(5))
        width = int(widths.max())
        if width == 0:
            dense = np.zeros((n, 0), dtype=np.float32)
        elif width <= max_dense_features:
            dense = np.zeros((n, width), dtype=np.float32)
            for i, c in enumerate(cands):  # only requests that carry dense features pay this loop
                if c.dense_features:
                    dense[i, :len(c.dense_features)] = c.dense_features
    return DecodedRequest(
        request_id=req.request_id, user_id=req.user_id,
        request_time_ms=req.request_time_ms if req.HasField("request_time_ms") else None,
        placement=ctx.placement, device=ctx.device,
        hour_of_day=ctx.hour_of_day if ctx.HasField("hour_of_day") else None,
        segment=req.user.segment, recent_categories=recent, n_candidates=n,
        ad_id=ad_id, advertiser_id=advertiser, campaign_id=campaign, category=category, bid=bid,
        dense_widths=widths, dense_width=width, dense=dense, model_name=req.model.name,
        model_version=req.model.version if req.model.HasField("version") else None,
        top_k=req.top_k if req.HasField("top_k") else None,
    )


class DecodeStage:
    """bytes | ScoreRequest → DecodedRequest (rows), ColumnsPayload | ScoreColumnsRequest → DecodedRequest
    (columns); records the caller's request id, model name and which wire format it spoke."""

    name = "decode"

    def __init__(self, config: ServerConfig) -> None:
        self.max_candidates = config.max_candidates
        self.max_dense_features = config.max_dense_features

    async def __call__(self, payload: ScorePayload, ctx: RequestContext) -> DecodedRequest:
        if isinstance(payload, ColumnsPayload | ranking_pb2.ScoreColumnsRequest):
            ctx.wire = "columns"
            decoded = decode_columns(parse_columns_wire(payload), max_candidates=self.max_candidates,
                                     max_dense_features=self.max_dense_features)
        else:
            decoded = decode_rows(parse_wire(payload), max_candidates=self.max_candidates,
                                  max_dense_features=self.max_dense_features)
        ctx.request_id, ctx.model = decoded.request_id, decoded.model_name
        return decoded
