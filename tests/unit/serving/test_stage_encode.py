"""encode: Ranking → ScoreResponse, with served_by, flags in their order and the timing fields."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import serving_fakes as fakes

from protos.adrank.v1 import ranking_pb2
from serving.config import ServerConfig
from serving.pipeline import Ranking, RequestContext
from serving.pipeline.encode import EncodeStage
from serving.validation import parse_request


def _ranking(req):
    parsed = parse_request(req, ServerConfig(), "vm", now_ms=fakes.NOW_MS)
    return Ranking(parsed, fakes.handle(version=2, fm_version=fakes.FM), "fake", ad_id=np.array([102, 100]),
                   request_index=np.array([2, 0]), p_ctr=np.array([0.5, 0.25], np.float32),
                   p_cvr=np.array([0.5, 0.5], np.float32), expected_value=np.array([0.75, 0.125]))


def test_response_carries_ranked_candidates_served_by_and_timing():
    ctx = RequestContext.begin(now=time.perf_counter() - 0.002)  # the request arrived 2 ms ago
    ctx.request_id, ctx.cache_us = "req-1", 40
    ctx.timings.update(decode=1e-4, validate=1e-5, route=1e-6, history=1e-4, features=5e-5, infer=2e-4, rank=1e-5)
    resp = asyncio.run(EncodeStage()(_ranking(fakes.request(3)), ctx))
    assert [(c.ad_id, c.request_index, c.rank) for c in resp.candidates] == [(102, 2, 1), (100, 0, 2)]
    assert resp.candidates[0].p_ctr == 0.5 and resp.candidates[1].expected_value == 0.125
    assert type(resp.candidates[0].ad_id) is int
    assert (resp.served_by.model_name, resp.served_by.model_version, resp.served_by.fm_version,
            resp.served_by.backend) == ("vm", 2, fakes.FM, "fake")
    assert resp.request_id == "req-1" and resp.request_time_ms == fakes.NOW_MS - 1000 and list(resp.flags) == []
    assert resp.timing.cache_us == 40 and resp.timing.features_us == 150 - 40 and resp.timing.inference_us == 200
    assert 2000 <= resp.timing.total_us < 10**6


def test_time_defaulted_comes_after_the_flags_stages_raised():
    req = fakes.request(3)
    req.ClearField("request_time_ms")
    ctx = RequestContext.begin()
    ctx.flags.append(ranking_pb2.FLAG_USER_HISTORY_MISSING)
    resp = asyncio.run(EncodeStage()(_ranking(req), ctx))
    assert list(resp.flags) == [ranking_pb2.FLAG_USER_HISTORY_MISSING, ranking_pb2.FLAG_REQUEST_TIME_DEFAULTED]
    assert ctx.flags == list(resp.flags)  # the context keeps what the response says, for a request log


def test_candidates_built_in_place_serialize_like_messages_built_apart():
    ranking = _ranking(fakes.request(3))
    response = asyncio.run(EncodeStage()(ranking, RequestContext.begin()))
    apart = [ranking_pb2.ScoredCandidate(ad_id=a, request_index=i, p_ctr=c, p_cvr=v, expected_value=e, rank=r)
             for r, (a, i, c, v, e) in enumerate(zip(ranking.ad_id.tolist(), ranking.request_index.tolist(),
                                                     ranking.p_ctr.tolist(), ranking.p_cvr.tolist(),
                                                     ranking.expected_value.tolist(), strict=True), start=1)]
    assert [c.SerializeToString() for c in response.candidates] == [c.SerializeToString() for c in apart]
