"""history: Route → WithHistory. Models without FM history pass through; LoopFM models get the
user's codes, and the context records the lookup time, the snapshot and the degraded flag."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import serving_fakes as fakes

from embedding_cache import InMemoryStore
from models.history import FM_HISTORY, FM_HISTORY_MASK, USER_INDEX, history_tensors
from protos.adrank.v1 import ranking_pb2
from serving.breaker import CircuitBreaker
from serving.config import ServerConfig
from serving.errors import InvalidRequest, ModelNotReady
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


def _general_tensors(store, handle, user_id: int, n: int) -> dict:
    """What the generic lookup gives (the reader's `lookup`, then `history_tensors`), for comparison."""
    hb, _, _ = store.reader(fakes.FM).lookup(user_id, fakes.NOW_MS, fakes.HISTORY_LEN, np.zeros(0, np.int64))
    return history_tensors(hb.codes, hb.lengths, fakes.HISTORY_LEN, fakes.HISTORY_WIDTH, np.zeros(n, np.int64))


def test_in_process_lookups_give_the_generic_lookups_tensors_bit_for_bit():
    store = fakes.fm_store(users=(7, 8))
    provider = HistoryProvider("memory", store)
    handle = fakes.handle(fm_version=fakes.FM, history=True)
    seen = []
    for user_id in (7, 999, 8, 7):  # the first request binds the served lookup, the others use it
        got = asyncio.run(provider.inputs(handle, user_id, fakes.NOW_MS, 3))
        want = _general_tensors(store, handle, user_id, 3)
        assert set(got.tensors) == set(want)
        for name, tensor in want.items():
            assert got.tensors[name].dtype == tensor.dtype and got.tensors[name].tobytes() == tensor.tobytes()
        assert got.flags == (() if user_id != 999 else (ranking_pb2.FLAG_USER_HISTORY_MISSING,))
        seen.append(got.tensors[FM_HISTORY])
    assert not any(np.shares_memory(a, b) for i, a in enumerate(seen) for b in seen[i + 1:])  # fresh codes each
    shared = got.tensors[USER_INDEX]
    assert not shared.flags.writeable and not got.tensors[FM_HISTORY_MASK].flags.writeable  # nobody can write them
    with pytest.raises(ValueError, match="read-only"):
        shared[0] = 1


def test_in_process_lookups_do_not_consult_the_breaker():
    breaker = CircuitBreaker(failures=1, cooldown_s=3600)
    breaker.failure()  # open: a Redis lookup would be skipped now
    provider = HistoryProvider("memory", fakes.fm_store(), breaker=breaker)
    got = asyncio.run(provider.inputs(fakes.handle(fm_version=fakes.FM, history=True), 7, fakes.NOW_MS, 2))
    assert got.flags == () and got.tensors[FM_HISTORY_MASK].sum() == 2


def test_a_bad_user_id_is_an_invalid_request_on_the_in_process_path():
    provider = HistoryProvider("memory", fakes.fm_store())
    handle = fakes.handle(fm_version=fakes.FM, history=True)
    asyncio.run(provider.inputs(handle, 7, fakes.NOW_MS, 2))
    with pytest.raises(InvalidRequest, match="user_id"):
        asyncio.run(provider.inputs(handle, -3, fakes.NOW_MS, 2))
    with pytest.raises(InvalidRequest, match="t_ms"):
        asyncio.run(provider.inputs(handle, 7, 0, 2))


def test_a_refreshed_snapshot_narrower_than_the_model_is_refused():
    provider = HistoryProvider("memory", fakes.fm_store())
    handle = fakes.handle(fm_version=fakes.FM, history=True)
    asyncio.run(provider.inputs(handle, 7, fakes.NOW_MS, 2))
    narrow = InMemoryStore()
    writer = narrow.writer(fakes.FM, dim=fakes.HISTORY_WIDTH - 1, codec="float32")
    writer.append_user_codes(np.array([7]), np.array([fakes.NOW_MS - 1]),
                             np.ones((1, fakes.HISTORY_WIDTH - 1), np.float32))
    writer.publish()
    writer.publish()  # s000002: another snapshot id than the one served
    reader = provider.reader(fakes.FM)
    assert reader._swap(narrow.current(fakes.FM))  # a snapshot of the same version a writer would refuse to publish
    with pytest.raises(ModelNotReady, match="width"):
        asyncio.run(provider.inputs(handle, 7, fakes.NOW_MS, 2))


def test_without_the_compiled_lookup_the_generic_path_serves_the_same_tensors(monkeypatch: pytest.MonkeyPatch):
    store = fakes.fm_store(users=(7,))
    handle = fakes.handle(fm_version=fakes.FM, history=True)
    want = asyncio.run(HistoryProvider("memory", store).inputs(handle, 7, fakes.NOW_MS, 3))
    monkeypatch.setenv("ADRANK_CACHE_KERNEL", "numpy")
    provider = HistoryProvider("memory", store)
    for _ in range(2):  # the first asks for the served lookup, the second knows there is none
        got = asyncio.run(provider.inputs(handle, 7, fakes.NOW_MS, 3))
        assert provider.reader(fakes.FM).lookup_path == "numpy"
        assert all(got.tensors[k].tobytes() == v.tobytes() for k, v in want.tensors.items())
        assert got.flags == want.flags == ()
