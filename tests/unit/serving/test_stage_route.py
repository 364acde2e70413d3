"""route: ParsedRequest → Route. Pins win, unpinned requests go to the newest ready version, and
the request must fit the chosen model's dense width."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import serving_fakes as fakes

from serving.config import ServerConfig
from serving.errors import InvalidRequest, ModelNotFound, ModelNotReady
from serving.history import HistoryProvider
from serving.pipeline import ARM_LIVE, RequestContext
from serving.pipeline.route import RouteStage, readiness
from serving.validation import parse_request


def _route(backend, history, req):
    parsed = parse_request(req, ServerConfig(), "vm", now_ms=fakes.NOW_MS)
    ctx = RequestContext.begin()
    return asyncio.run(RouteStage(backend, history)(parsed, ctx)), ctx


def _backend():
    # v1 reads no history, v2 reads FM codes of a version the cache holds, v3 of one it lacks
    return fakes.FakeBackend(fakes.handle(version=1), fakes.handle(version=2, fm_version=fakes.FM, history=True),
                             fakes.handle(version=3, fm_version="fm-absent", history=True))


def test_unpinned_goes_to_the_newest_ready_version_and_records_it():
    route, ctx = _route(_backend(), HistoryProvider("memory", fakes.fm_store()), fakes.request(2))
    assert route.handle.version == 2 and route.request.ad_id.tolist() == [100, 101]
    assert (ctx.model, ctx.version, ctx.arm, ctx.fm_version) == ("vm", 2, ARM_LIVE, fakes.FM)


def test_without_a_cache_only_the_version_without_history_serves():
    route, _ = _route(_backend(), HistoryProvider(), fakes.request(1))
    assert route.handle.version == 1


def test_a_pinned_version_that_is_not_ready_is_refused_naming_why():
    req = fakes.request(1, model={"version": 3})
    with pytest.raises(ModelNotReady, match="fm-absent"):
        _route(_backend(), HistoryProvider("memory", fakes.fm_store()), req)


def test_no_ready_version_names_each_reason():
    backend = fakes.FakeBackend(fakes.handle(version=3, fm_version="fm-absent", history=True))
    with pytest.raises(ModelNotReady, match=r"no version of 'vm' is ready; v3: .*fm-absent"):
        _route(backend, HistoryProvider("memory", fakes.fm_store()), fakes.request(1))


def test_unknown_model_or_version_is_not_found():
    with pytest.raises(ModelNotFound, match="no model 'other'"):
        _route(_backend(), HistoryProvider(), fakes.request(1, model={"name": "other"}))
    with pytest.raises(ModelNotFound, match="has no version 9"):
        _route(_backend(), HistoryProvider(), fakes.request(1, model={"version": 9}))


def test_dense_features_wider_than_the_model_are_refused():
    req = fakes.request(2)
    req.candidates[0].dense_features.extend(np.ones(fakes.SPEC.max_extra_dense + 1).tolist())
    with pytest.raises(InvalidRequest, match=r"candidates.dense_features: 4 values exceed model vm/1's width of 3"):
        _route(fakes.FakeBackend(), HistoryProvider(), req)


def test_readiness_lists_every_version():
    state = readiness(_backend(), HistoryProvider("memory", fakes.fm_store()))
    assert state["vm/1"] == "ready" and state["vm/2"] == "ready" and "fm-absent" in state["vm/3"]
