"""rank: Scores → Ranking. Expected value in float64, best first, ties in request order, top_k."""

from __future__ import annotations

import asyncio

import numpy as np
import serving_fakes as fakes

from serving.config import ServerConfig
from serving.pipeline import RequestContext, Scores
from serving.pipeline.rank import RankStage, rank_order
from serving.validation import parse_request


def test_order_is_by_expected_value_with_ties_in_request_order():
    bid = np.array([1.0, 2.0, 1.0, 0.5])
    p_ctr = np.array([0.5, 0.25, 0.5, 1.0], np.float32)
    p_cvr = np.ones(4, np.float32)
    order, ev = rank_order(bid, p_ctr, p_cvr, None)
    assert order.tolist() == [0, 1, 2, 3]  # all four are worth 0.5: request order
    assert ev.dtype == np.float64
    order, _ = rank_order(np.array([1.0, 3.0, 2.0]), np.ones(3, np.float32), np.ones(3, np.float32), 2)
    assert order.tolist() == [1, 2]


def test_ranking_gathers_the_ranked_columns():
    req = fakes.request(5, top_k=3)
    parsed = parse_request(req, ServerConfig(), "vm", now_ms=fakes.NOW_MS)
    p_ctr = np.array([0.1, 0.5, 0.2, 0.4, 0.3], np.float32)
    p_cvr = np.full(5, 0.5, np.float32)
    ranking = asyncio.run(RankStage()(Scores(parsed, fakes.handle(), "fake", p_ctr, p_cvr), RequestContext.begin()))
    ev = parsed.bid * p_ctr.astype(np.float64) * 0.5
    assert ranking.request_index.tolist() == np.argsort(-ev)[:3].tolist() == [3, 4, 1]
    assert ranking.ad_id.tolist() == [103, 104, 101]
    np.testing.assert_array_equal(ranking.expected_value, ev[[3, 4, 1]])
    np.testing.assert_array_equal(ranking.p_ctr, p_ctr[[3, 4, 1]])
