"""features: WithHistory → ModelInputs, built by the function training uses."""

from __future__ import annotations

import asyncio

import numpy as np
import serving_fakes as fakes

from models.features import DEVICES, PLACEMENTS, features_for_request
from serving.config import ServerConfig
from serving.history import HistoryInputs
from serving.pipeline import RequestContext, WithHistory
from serving.pipeline.features import FeaturesStage
from serving.validation import parse_request


def _parsed(n=4):
    return parse_request(fakes.request(n), ServerConfig(), "vm", now_ms=fakes.NOW_MS)


def test_tensors_equal_the_training_feature_builder():
    parsed, handle = _parsed(), fakes.handle()
    out = asyncio.run(FeaturesStage()(WithHistory(parsed, handle, None), RequestContext.begin()))
    want = features_for_request(fakes.SPEC, ad_id=parsed.ad_id, advertiser_id=parsed.advertiser_id,
                                campaign_id=parsed.campaign_id, category=parsed.category, bid=parsed.bid,
                                placement=PLACEMENTS.index("feed"), device=DEVICES.index("ios"), hour=parsed.hour,
                                user_segment=2, recent_categories=parsed.recent_categories)
    assert out.tensors.keys() == want.keys() == {"sparse", "recent", "dense"}
    for name, value in want.items():
        np.testing.assert_array_equal(out.tensors[name], value)
    assert out.request is parsed and out.handle is handle


def test_history_tensors_join_the_features():
    hist = HistoryInputs({"fm_history": np.zeros((1, 2, 3), np.float32)}, (), 5, "s1")
    out = asyncio.run(FeaturesStage()(WithHistory(_parsed(), fakes.handle(), hist), RequestContext.begin()))
    assert set(out.tensors) == {"sparse", "recent", "dense", "fm_history"}
