"""Admission control, the deadline check at stage boundaries, the circuit breaker and the cache's
degraded mode, in process (the same behaviours against real processes: tests/integration/test_faults*.py)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import serving_fakes as fakes

from embedding_cache import CacheUnavailableError
from protos.adrank.v1 import ranking_pb2
from serving.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from serving.config import ServerConfig
from serving.errors import DeadlineExpired, Overloaded
from serving.history import HistoryProvider
from serving.metrics import ServiceMetrics
from serving.pipeline import Pipeline, RequestContext
from serving.pipeline.admission import ConcurrencyLimit


def test_admission_runs_the_limit_queues_the_next_and_refuses_the_rest_at_once() -> None:
    async def run() -> None:
        limit = ConcurrencyLimit(2, max_queued=1, max_queue_wait_s=0.5, retry_after_ms=70)
        a, b, c, d = (RequestContext.begin() for _ in range(4))
        await limit.admit(a)
        await limit.admit(b)
        queued = asyncio.create_task(limit.admit(c))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="max_queued=1") as refused:
            await limit.admit(d)
        assert refused.value.retry_after_ms == 70
        limit.release(a)  # the slot goes to the queued call
        await queued
        assert (limit.in_flight, limit.queued) == (2, 0)
        limit.release(b)
        limit.release(c)
        assert limit.in_flight == 0

    asyncio.run(run())


def test_a_queued_call_is_refused_when_its_wait_or_its_deadline_runs_out() -> None:
    async def run() -> None:
        limit = ConcurrencyLimit(1, max_queued=4, max_queue_wait_s=0.02)
        await limit.admit(RequestContext.begin())
        with pytest.raises(Overloaded, match="no slot within 20 ms"):
            await limit.admit(RequestContext.begin())
        with pytest.raises(Overloaded, match="no slot within [01] ms"):
            await limit.admit(RequestContext.begin(0.001))
        assert (limit.in_flight, limit.queued) == (1, 0)

    asyncio.run(run())


def test_the_server_cap_bounds_the_callers_deadline_and_applies_without_one() -> None:
    assert RequestContext.begin(10.0, max_s=0.5, now=0.0).deadline == 0.5
    assert RequestContext.begin(None, max_s=0.5, now=0.0).deadline == 0.5
    assert RequestContext.begin(0.1, max_s=0.5, now=0.0).deadline == 0.1


def test_a_passed_deadline_stops_at_the_next_stage_boundary_and_is_counted() -> None:
    backend, metrics = fakes.FakeBackend(), ServiceMetrics()

    def slow(features):
        async def stage(value, ctx):
            await asyncio.sleep(0.02)
            return await features(value, ctx)
        return stage

    pipeline = Pipeline.build(ServerConfig(), backend, metrics=metrics).wrap("features", slow)
    with pytest.raises(DeadlineExpired, match="before stage 'infer'"):
        asyncio.run(pipeline.run(fakes.request(3), RequestContext.begin(0.005)))
    assert backend.calls == []
    assert metrics.registry.get_sample_value("adrank_deadline_expired_total", {"stage": "infer"}) == 1


def test_breaker_opens_after_n_failures_probes_after_the_cooldown_and_closes() -> None:
    now = [0.0]
    breaker = CircuitBreaker(failures=3, cooldown_s=1.0, clock=lambda: now[0])
    for _ in range(3):
        assert breaker.allow()
        breaker.failure()
    assert breaker.state == OPEN and not breaker.allow()
    now[0] = 1.0
    assert breaker.allow() and breaker.state == HALF_OPEN
    assert not breaker.allow()  # one probe at a time
    breaker.failure()
    assert breaker.state == OPEN and not breaker.allow()
    now[0] = 2.5
    assert breaker.allow()
    breaker.success()
    assert breaker.state == CLOSED and breaker.allow()


class _Down:
    """A reader whose cache has gone away after it opened."""

    def __init__(self, reader) -> None:
        self._reader, self.down = reader, False

    def __getattr__(self, name):
        return getattr(self._reader, name)

    def lookup(self, *args):
        if self.down:
            raise CacheUnavailableError("redis at redis://x unavailable: connection refused")
        return self._reader.lookup(*args)


def test_cache_down_scores_with_the_prior_flagged_apart_from_missing_history() -> None:
    store = fakes.fm_store()
    provider = HistoryProvider("memory", "", breaker=CircuitBreaker(failures=2, cooldown_s=60))
    reader = _Down(store.reader(fakes.FM))
    provider._readers[fakes.FM] = reader
    provider._keep_prior(reader)
    h = fakes.handle(fm_version=fakes.FM, history=True)
    ok = asyncio.run(provider.inputs(h, 7, fakes.NOW_MS, 3))
    cold = asyncio.run(provider.inputs(h, 999, fakes.NOW_MS, 3))
    assert ok.flags == () and cold.flags == (ranking_pb2.FLAG_USER_HISTORY_MISSING,)
    reader.down = True
    degraded = [asyncio.run(provider.inputs(h, 7, fakes.NOW_MS, 3)) for _ in range(3)]
    assert all(d.flags == (ranking_pb2.FLAG_HISTORY_CACHE_UNAVAILABLE,) for d in degraded)
    assert provider.breaker.state == OPEN
    for name, tensor in cold.tensors.items():  # the prior, as a cold user gets it
        np.testing.assert_array_equal(degraded[-1].tensors[name], tensor)
