"""history: Route → WithHistory. Models without FM history pass through; LoopFM models get the
user's codes, and the context records the lookup time, the snapshot and the degraded flag."""

from __future__ import annotations

import asyncio

import numpy as np
import serving_fakes as fakes

from models.history import FM_HISTORY, FM_HISTORY_MASK, USER_INDEX
from protos.adrank.v1 import ranking_pb2
from serving.config import ServerConfig
from serving.history import HistoryProvider
from serving.pipeline import RequestContext, Route
from serving.pipeline.history import HistoryStage
from serving.validation import parse_request


def _history(handle, provider, user_id=7, n=3):
    req = fakes.request(n)
    req.user_id = user_id
    parsed = parse_request(req, ServerConfig(), "vm", now_ms=fakes.NOW_MS)
    ctx = RequestContext.begin()
    return asyncio.run(HistoryStage(provider)(Route(parsed, handle), ctx)), ctx


def test_a_model_without_history_passes_through_without_touching_the_cache():
    class Untouchable(HistoryProvider):
        async def inputs(self, *args, **kwargs):  # noqa: ANN002, ANN003
            raise AssertionError("no lookup expected")

    out, ctx = _history(fakes.handle(), Untouchable())
    assert out.history is None and ctx.flags == [] and ctx.snapshot_id == "" and ctx.cache_us == 0


def test_a_loopfm_model_gets_the_users_codes_and_the_snapshot_is_recorded():
    out, ctx = _history(fakes.handle(fm_version=fakes.FM, history=True), HistoryProvider("memory", fakes.fm_store()))
    tensors = out.history.tensors
    assert set(tensors) == {FM_HISTORY, FM_HISTORY_MASK, USER_INDEX}
    assert tensors[FM_HISTORY].shape == (1, fakes.HISTORY_LEN, fakes.HISTORY_WIDTH)
    assert tensors[FM_HISTORY_MASK].sum() == 2 and tensors[USER_INDEX].tolist() == [0, 0, 0]
    assert ctx.flags == [] and ctx.snapshot_id == out.history.snapshot_id != ""
    assert ctx.cache_us == out.history.cache_us >= 0


def test_a_user_without_history_is_flagged_degraded():
    out, ctx = _history(fakes.handle(fm_version=fakes.FM, history=True), HistoryProvider("memory", fakes.fm_store()),
                        user_id=999)
    assert ctx.flags == [ranking_pb2.FLAG_USER_HISTORY_MISSING]
    assert np.isfinite(out.history.tensors[FM_HISTORY]).all()
