"""Pipeline.run: the eight stages in order, each timed into the context and the stage histogram;
stages swapped or wrapped through `replace` / `wrap`; the admission seam; errors pass through typed."""

from __future__ import annotations

import asyncio

import pytest
import serving_fakes as fakes

from serving.config import ServerConfig
from serving.errors import ModelNotFound, Overloaded
from serving.metrics import ServiceMetrics
from serving.pipeline import STAGE_NAMES, Pipeline, RequestContext, Stages

ORDER = ("decode", "validate", "route", "history", "features", "infer", "rank", "encode")


def _pipeline(**kw) -> Pipeline:
    return Pipeline.build(ServerConfig(), fakes.FakeBackend(), **kw)


def _run(pipeline: Pipeline, payload=None) -> tuple:
    ctx = RequestContext.begin()
    payload = fakes.request(5).SerializeToString() if payload is None else payload
    return asyncio.run(pipeline.run(payload, ctx)), ctx


def test_stages_run_in_order_and_each_is_timed():
    assert STAGE_NAMES == ORDER
    response, ctx = _run(_pipeline())
    assert len(response.candidates) == 5 and response.served_by.backend == "fake"
    assert tuple(ctx.timings) == ORDER and all(t >= 0 for t in ctx.timings.values())
    assert sum(ctx.timings.values()) <= response.timing.total_us / 1e6 + 1e-3


def test_every_stage_is_observed_in_the_histogram_by_label():
    metrics = ServiceMetrics()
    _run(_pipeline(metrics=metrics))
    _run(_pipeline(metrics=metrics))
    for stage in ORDER:
        assert metrics.registry.get_sample_value("adrank_stage_latency_seconds_count", {"stage": stage}) == 2


def test_wrap_sees_a_stages_input_and_output_and_leaves_the_others_alone():
    seen = []

    def spy(inner):
        async def stage(value, ctx):
            out = await inner(value, ctx)
            seen.append((type(value).__name__, type(out).__name__, ctx.version))
            return out
        return stage

    base = _pipeline()
    wrapped = base.wrap("rank", spy)
    _run(wrapped)
    assert seen == [("Scores", "Ranking", 1)]
    assert wrapped.stages.infer is base.stages.infer and wrapped.stages.rank is not base.stages.rank
    _run(base)
    assert len(seen) == 1  # wrapping returned a new pipeline; the original is untouched


def test_replace_swaps_a_stage_for_another():
    fallback = fakes.FakeBackend()
    fallback.name = "fallback"
    from serving.pipeline.infer import InferStage

    response, _ = _run(_pipeline().replace(infer=InferStage(fallback)))
    assert response.served_by.backend == "fallback" and len(fallback.calls) == 1


def test_unknown_stage_names_are_refused():
    with pytest.raises(ValueError, match="no stage named 'score'; stages are decode, validate"):
        _pipeline().wrap("score", lambda s: s)
    with pytest.raises(ValueError, match="no stage named bogus"):
        _pipeline().replace(bogus=lambda v, c: v)


def test_a_failing_stage_stops_the_request_with_its_typed_error_and_earlier_timings_kept():
    ctx = RequestContext.begin()
    req = fakes.request(2, model={"name": "missing"})
    with pytest.raises(ModelNotFound):
        asyncio.run(_pipeline().run(req, ctx))
    assert tuple(ctx.timings) == ("decode", "validate")


def test_stages_default_builds_every_stage():
    stages = Stages.default(ServerConfig(), fakes.FakeBackend(), None)
    assert all(callable(getattr(stages, n)) for n in ORDER)


class CountingAdmission:
    """Admits `capacity` requests, refuses the rest: a stand-in for the policy the seam is for."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.admitted, self.released = capacity, 0, 0

    async def admit(self, ctx: RequestContext) -> None:
        if self.admitted - self.released >= self.capacity:
            raise Overloaded("server at capacity: 0 of 0 slots free, retry after 10 ms")
        self.admitted += 1

    def release(self, ctx: RequestContext) -> None:
        self.released += 1


def test_admission_is_asked_before_the_first_stage_and_told_after_the_last():
    admission = CountingAdmission(capacity=1)
    pipeline = _pipeline(admission=admission)
    _run(pipeline)
    assert (admission.admitted, admission.released) == (1, 1)
    with pytest.raises(ModelNotFound):
        _run(pipeline, fakes.request(1, model={"name": "missing"}))
    assert (admission.admitted, admission.released) == (2, 2)  # released on failure too
    admission.capacity = 0
    ctx = RequestContext.begin()
    with pytest.raises(Overloaded):
        asyncio.run(pipeline.run(fakes.request(1), ctx))
    assert ctx.timings == {} and admission.released == 2  # refused before any stage, nothing to release
