"""A request-log record from a Score request and its response, as they travel on the wire.

Why from the wire messages: they are the one stable contract between the caller and the server, so
the same function serves the server's encode stage (which holds both messages) and a client that logs
what it sent and got back (the traffic simulator's `--client-log`). The request pipeline, which holds
every candidate's scores, may build `RequestRecord` directly instead and log scores the response omits
(top_k); here, candidates the response does not return get NaN scores.

Usage::

    record = record_from_exchange(request, response, rollout_arm="b", stage_us={"infer": 410})
    sink.offer(record)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from models.data.requestlog import RequestRecord
from models.features import vocab_index
from models.vocab import DEVICES, PLACEMENTS
from protos.adrank.v1 import ranking_pb2

MS_PER_HOUR = 3_600_000


def record_from_exchange(request: ranking_pb2.ScoreRequest, response: ranking_pb2.ScoreResponse, *,
                         rollout_arm: str = "", snapshot_id: str = "", stage_us: Mapping[str, int] | None = None,
                         logged_at_ms: int = 0) -> RequestRecord:
    """The log row of one served request: context as the model's indices, candidates in request order,
    scores scattered back to request order, `order` = the returned request indices, best first."""
    cands = request.candidates
    n = len(cands)
    ints = np.array([(c.ad_id, c.advertiser_id, c.campaign_id, c.category) for c in cands],
                    dtype=np.int64).reshape(n, 4)
    bid = np.array([c.bid for c in cands], dtype=np.float64)
    width = max((len(c.dense_features) for c in cands), default=0)
    dense = None
    if width:
        dense = np.zeros((n, width), dtype=np.float32)
        for i, c in enumerate(cands):
            dense[i, :len(c.dense_features)] = c.dense_features
    order = np.array([c.request_index for c in response.candidates], dtype=np.int32)
    p_ctr = np.full(n, np.nan, np.float32)
    p_cvr = np.full(n, np.nan, np.float32)
    value = np.full(n, np.nan, np.float64)
    p_ctr[order] = [c.p_ctr for c in response.candidates]
    p_cvr[order] = [c.p_cvr for c in response.candidates]
    value[order] = [c.expected_value for c in response.candidates]
    t = int(response.request_time_ms or request.request_time_ms)
    ctx = request.context
    hour = int(ctx.hour_of_day) if ctx.HasField("hour_of_day") else int((t // MS_PER_HOUR) % 24)
    sb = response.served_by
    return RequestRecord(
        request_id=response.request_id or request.request_id, request_time_ms=t, user_id=int(request.user_id),
        placement=vocab_index(PLACEMENTS, ctx.placement), device=vocab_index(DEVICES, ctx.device), hour=hour,
        user_segment=int(request.user.segment), recent_categories=np.array(request.user.recent_categories, np.int32),
        ad_id=ints[:, 0], advertiser_id=ints[:, 1], campaign_id=ints[:, 2], category=ints[:, 3].astype(np.int32),
        bid=bid, dense_features=dense, model_name=sb.model_name, model_version=int(sb.model_version),
        rollout_arm=rollout_arm, backend=sb.backend, fm_version=sb.fm_version, snapshot_id=snapshot_id,
        flags=[ranking_pb2.Flag.Name(f) for f in response.flags], stage_us=dict(stage_us or {}),
        p_ctr=p_ctr, p_cvr=p_cvr, expected_value=value, order=order, logged_at_ms=logged_at_ms,
    )
