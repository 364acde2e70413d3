"""Shadow scoring: sampled live requests are mirrored to the shadow version off the response path,
the pair of score vectors is kept with its statistics, and a full queue drops mirrors instead of
waiting."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import serving_fakes as fakes

from serving.config import ServerConfig
from serving.history import HistoryProvider
from serving.pipeline import Pipeline, RequestContext
from serving.pipeline.route import RouteStage
from serving.pipeline.shadow import ShadowScorer, spearman, top_k_overlap
from serving.rollout.routing import RoutingTable, ShadowRoute


class Tables:
    def __init__(self, *tables: RoutingTable) -> None:
        self.tables = {t.model: t for t in tables}

    def table(self, model: str) -> RoutingTable | None:
        return self.tables.get(model)


def test_statistics_of_a_pair():
    a = np.array([0.1, 0.4, 0.2, 0.3])
    assert spearman(a, a * 2) == pytest.approx(1.0) and spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a[:1], a[:1]) is None and spearman(a, np.ones(4)) is None
    assert top_k_overlap(a, a, k=2) == 1.0 and top_k_overlap(a, -a, k=2) == 0.0


def _request(n: int, i: int):
    req = fakes.request(n)
    req.request_id = f"r{i}"
    for j, c in enumerate(req.candidates):
        c.dense_features.extend([0.3 * j - 1.0, 0.0])
    return req.SerializeToString()


def _run(scorer: ShadowScorer | None, backend, router, requests, *, start=True):
    async def go():
        pipeline = Pipeline.build(ServerConfig(), backend, HistoryProvider())
        pipeline = pipeline.replace(route=RouteStage(backend, HistoryProvider(), router))
        if scorer is not None:
            pipeline = pipeline.wrap("infer", scorer.wrap)
            if start:
                await scorer.start()
        out = [await pipeline.run(r, RequestContext.begin()) for r in requests]
        if scorer is not None and start:
            await asyncio.wait_for(scorer._queue.join(), 5)
            await scorer.close()
        return out
    return asyncio.run(go())


def test_sampled_live_requests_are_mirrored_and_paired_and_responses_are_live_only():
    backend = fakes.FakeBackend(fakes.handle(version=1), fakes.handle(version=2))
    router = Tables(RoutingTable(model="vm", live=1, shadow=ShadowRoute(version=2, sample_rate=0.5, salt="s")))
    scorer = ShadowScorer(backend, HistoryProvider(), router, queue_size=1000)
    responses = _run(scorer, backend, router, [_request(6, i) for i in range(400)])
    assert {r.served_by.model_version for r in responses} == {1}
    stats = scorer.stats("vm")
    # about half the requests, by request id (4 sigma of a binomial(400, 0.5) is 40)
    assert 160 <= stats["pairs"] <= 240 and stats["dropped"] == 0
    pair = scorer.pairs[0]
    assert (pair.live_version, pair.shadow_version) == (1, 2) and pair.live_p_ctr.shape == (6,)
    # the fake model scores both versions alike: a perfect pair
    assert stats["rank_correlation"] == pytest.approx(1.0) and stats["top_k_overlap"] == 1.0
    assert stats["mean_abs_delta_p_ctr"] == 0.0
    shadow_calls = [h.version for h, _ in backend.calls].count(2)
    assert shadow_calls == stats["pairs"]


def test_a_full_queue_drops_mirrors_and_never_waits():
    backend = fakes.FakeBackend(fakes.handle(version=1), fakes.handle(version=2))
    router = Tables(RoutingTable(model="vm", live=1, shadow=ShadowRoute(version=2, sample_rate=1.0, salt="s")))
    scorer = ShadowScorer(backend, HistoryProvider(), router, queue_size=3)

    async def go():
        await scorer.start()
        for t in scorer._tasks:  # no worker: the queue only fills
            t.cancel()
        pipeline = Pipeline.build(ServerConfig(), backend, HistoryProvider())
        pipeline = pipeline.replace(route=RouteStage(backend, HistoryProvider(), router)).wrap("infer", scorer.wrap)
        return [await pipeline.run(_request(4, i), RequestContext.begin()) for i in range(10)]

    responses = asyncio.run(go())
    assert len(responses) == 10 and scorer.stats("vm")["dropped"] == 7
    assert scorer._queue.qsize() == 3


def test_a_busy_server_drops_every_mirror():
    backend = fakes.FakeBackend(fakes.handle(version=1), fakes.handle(version=2))
    router = Tables(RoutingTable(model="vm", live=1, shadow=ShadowRoute(version=2, sample_rate=1.0, salt="s")))
    scorer = ShadowScorer(backend, HistoryProvider(), router, busy=lambda: True)
    responses = _run(scorer, backend, router, [_request(4, i) for i in range(20)])
    assert len(responses) == 20 and scorer.stats("vm")["dropped"] == 20 and scorer.stats("vm")["pairs"] == 0
    assert [h.version for h, _ in backend.calls] == [1] * 20


def test_a_mirrored_request_carries_a_future_of_the_shadow_scores_and_close_resolves_the_rest():
    backend = fakes.FakeBackend(fakes.handle(version=1), fakes.handle(version=2))
    router = Tables(RoutingTable(model="vm", live=1, shadow=ShadowRoute(version=2, sample_rate=1.0, salt="s")))

    async def go():
        pipeline = Pipeline.build(ServerConfig(), backend, HistoryProvider())
        pipeline = pipeline.replace(route=RouteStage(backend, HistoryProvider(), router))
        scorer = ShadowScorer(backend, HistoryProvider(), router, queue_size=10)
        pipeline = pipeline.wrap("infer", scorer.wrap)
        await scorer.start()
        ctxs = [RequestContext.begin() for _ in range(3)]
        for i, ctx in enumerate(ctxs):
            await pipeline.run(_request(4, i), ctx)
        await scorer.drain(5)
        scored = [ctx.shadow.result() for ctx in ctxs]
        await scorer.close()  # the workers stop; a mirror queued now is never scored...
        late = RequestContext.begin()
        await pipeline.run(_request(4, 9), late)
        assert late.shadow is not None and not late.shadow.done()
        await scorer.close()  # ...and closing resolves it, so no record waits for it forever
        return scored, late.shadow

    scored, late = asyncio.run(go())
    for version, p_ctr, p_cvr, snapshot_id in scored:
        assert version == 2 and p_ctr.shape == p_cvr.shape == (4,) and p_ctr.dtype == np.float32
        assert snapshot_id == ""  # the fakes' history provider reads no snapshot
    assert late.done() and late.result() is None


@pytest.mark.parametrize("shadow_fm", ["none", "fm-other"])
def test_a_shadow_reading_the_same_tensors_reuses_lives_and_any_other_builds_its_own(shadow_fm):
    backend = fakes.FakeBackend(fakes.handle(version=1), fakes.handle(version=2, fm_version=shadow_fm))
    router = Tables(RoutingTable(model="vm", live=1, shadow=ShadowRoute(version=2, sample_rate=1.0, salt="s")))
    scorer = ShadowScorer(backend, HistoryProvider(), router, queue_size=1000)
    built = []
    features = scorer._features

    async def counting(value, ctx):
        built.append(value.handle.version)
        return await features(value, ctx)

    scorer._features = counting
    _run(scorer, backend, router, [_request(6, i) for i in range(20)])
    live = [inputs for h, inputs in backend.calls if h.version == 1]
    shadow = [inputs for h, inputs in backend.calls if h.version == 2]
    assert len(live) == len(shadow) == scorer.stats("vm")["pairs"] == 20
    if shadow_fm == "none":  # same fm_version, spec, codes, graph inputs: live's very tensors, no rebuild
        assert built == [] and all(any(s is x for x in live) for s in shadow)
    else:  # another fm_version: its own history and features, built for it
        assert built == [2] * 20 and not any(s is x for s in shadow for x in live)
        assert all(np.array_equal(s["sparse"], x["sparse"]) for s, x in zip(shadow, live, strict=True))
