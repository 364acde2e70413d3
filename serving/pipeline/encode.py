"""Stage 8, encode: Ranking → ScoreResponse (or ScoreColumnsResponse when the caller spoke columns,
`serving.pipeline.encode_columns`). The only stage besides decode that touches protobuf.

Fills the response's timing from the context: total_us from the request's start to now (so it
covers every stage, decode included), inference_us the infer stage, cache_us the lookup inside
history, features_us the rest of history plus features. gRPC serializes the message afterwards.
"""

from __future__ import annotations

import time

from protos.adrank.v1 import ranking_pb2
from serving.pipeline.context import RequestContext
from serving.pipeline.encode_columns import set_ranked_columns
from serving.pipeline.values import Ranking


def add_candidates(response: ranking_pb2.ScoreResponse, ranking: Ranking) -> None:
    """Appends one ScoredCandidate per ranked row to `response`, rank 1 first."""
    add = response.candidates.add  # built in place: a list of messages passed to the constructor is copied
    # plain Python scalars: message construction from numpy scalars is several times slower
    for r, (a, i, c, v, e) in enumerate(zip(ranking.ad_id.tolist(), ranking.request_index.tolist(),
                                            ranking.p_ctr.tolist(), ranking.p_cvr.tolist(),
                                            ranking.expected_value.tolist(), strict=True), start=1):
        add(ad_id=a, request_index=i, p_ctr=c, p_cvr=v, expected_value=e, rank=r)


class EncodeStage:
    """Ranking → ScoreResponse (rows) or ScoreColumnsResponse (columns, when `ctx.wire` says the
    request came as columns), with served_by, flags and timing."""

    name = "encode"

    async def __call__(self, ranking: Ranking,
                       ctx: RequestContext) -> ranking_pb2.ScoreResponse | ranking_pb2.ScoreColumnsResponse:
        request, handle = ranking.request, ranking.handle
        if request.time_defaulted:  # raised last, after history's flags, as responses always listed them
            ctx.flags.append(ranking_pb2.FLAG_REQUEST_TIME_DEFAULTED)
        columns = ctx.wire == "columns"
        response = (ranking_pb2.ScoreColumnsResponse if columns else ranking_pb2.ScoreResponse)(
            request_id=ctx.request_id, request_time_ms=request.request_time_ms)
        if ctx.flags:
            response.flags.extend(ctx.flags)
        served_by = response.served_by  # fields set in place: a ServedBy passed to the constructor is copied
        served_by.model_name, served_by.model_version = handle.name, handle.version
        served_by.fm_version, served_by.backend = handle.fm_version, ranking.backend
        if columns:
            set_ranked_columns(response, ranking)
        else:
            add_candidates(response, ranking)
        end = time.perf_counter()
        timings = ctx.timings  # read directly: this runs once per request, on every request
        timing = response.timing
        timing.cache_us = ctx.cache_us
        timing.features_us = max(int((timings.get("history", 0.0) + timings.get("features", 0.0)) * 1e6)
                                 - ctx.cache_us, 0)
        timing.inference_us = int(timings.get("infer", 0.0) * 1e6)
        timing.total_us = int((end - ctx.started) * 1e6)
        return response
