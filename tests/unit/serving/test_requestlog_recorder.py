"""The encode-stage recorder: one record per scored request with every candidate's scores, the sample
counted without building records, and a record that cannot be built never failing the request."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import serving_fakes as fakes

from models.data.requestlog import read_request_log
from serving.config import ServerConfig
from serving.metrics import ServiceMetrics
from serving.pipeline import STAGE_NAMES, Pipeline, RequestContext
from serving.requestlog import RequestLogSink, SinkConfig
from serving.requestlog import recorder as recorder_module
from serving.requestlog.recorder import logging_encode


def _score(pipeline: Pipeline, n: int, request_id: str, top_k: int | None = None):
    request = fakes.request(n)
    request.request_id = request_id
    if top_k is not None:
        request.top_k = top_k
    ctx = RequestContext.begin()
    return asyncio.run(pipeline.run(request, ctx)), ctx


def test_each_request_is_recorded_with_every_candidate_in_request_order(tmp_path: Path) -> None:
    metrics = ServiceMetrics()
    sink = RequestLogSink(SinkConfig(folder=str(tmp_path)), registry=metrics.registry)
    pipeline = Pipeline.build(ServerConfig(), fakes.FakeBackend()).wrap("encode", logging_encode(sink))
    responses = [_score(pipeline, 6, f"r{i}", top_k=2)[0] for i in range(3)]
    stats = sink.close()
    assert stats.written == 3
    rows = read_request_log(tmp_path).to_pylist()
    for row, resp in zip(rows, responses, strict=True):
        assert row["request_id"] == resp.request_id and len(row["p_ctr"]) == 6  # top_k 2, all 6 scored
        assert row["order"] == [c.request_index for c in resp.candidates]
        for c in resp.candidates:
            assert np.float32(row["p_ctr"][c.request_index]) == np.float32(c.p_ctr)
        assert set(dict(row["stage_us"])) == set(STAGE_NAMES)
    assert metrics.registry.get_sample_value("adrank_requestlog_records_written_total") == 3


def test_requests_outside_the_sample_are_counted_without_a_record(tmp_path: Path) -> None:
    sink = RequestLogSink(SinkConfig(folder=str(tmp_path), sample_rate=0.5))
    pipeline = Pipeline.build(ServerConfig(), fakes.FakeBackend()).wrap("encode", logging_encode(sink))
    for i in range(200):
        _score(pipeline, 3, f"req-{i}")
    stats = sink.close()
    assert stats.offered == 200 == stats.written + stats.sampled_out and 50 < stats.written < 150
    assert sorted(read_request_log(tmp_path).column("request_id").to_pylist()) == sorted(
        f"req-{i}" for i in range(200) if sink.wants(f"req-{i}"))


def test_a_record_that_cannot_be_built_is_counted_and_the_response_still_goes_out(tmp_path, monkeypatch) -> None:
    metrics = ServiceMetrics()
    sink = RequestLogSink(SinkConfig(folder=str(tmp_path)))

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(recorder_module, "record_from_ranking", broken)
    pipeline = Pipeline.build(ServerConfig(), fakes.FakeBackend()).wrap(
        "encode", logging_encode(sink, registry=metrics.registry))
    response, _ = _score(pipeline, 4, "r1")
    _score(pipeline, 4, "r2")
    sink.close()
    assert len(response.candidates) == 4
    assert metrics.registry.get_sample_value("adrank_requestlog_record_errors_total") == 2


def test_a_shadowed_request_is_recorded_with_both_score_vectors_once_the_shadow_scored_it(tmp_path: Path) -> None:
    """`ctx.shadow` (set by the shadow scorer) holds the record back until it resolves; a failed mirror
    (None) is logged without shadow scores; a request that was not mirrored is offered at once."""
    sink = RequestLogSink(SinkConfig(folder=str(tmp_path), writer="thread"))

    def mirror(infer):  # noqa: ANN001, ANN202 - stands in for ShadowScorer.wrap
        async def stage(inputs, ctx):  # noqa: ANN001, ANN202
            scores = await infer(inputs, ctx)
            if ctx.request_id != "plain":
                loop = asyncio.get_running_loop()
                ctx.shadow = loop.create_future()
                value = None if ctx.request_id == "failed" else (7, scores.p_ctr * 2, scores.p_cvr / 2, "s000042")
                loop.call_later(0.02, ctx.shadow.set_result, value)
            return scores
        return stage

    pipeline = Pipeline.build(ServerConfig(), fakes.FakeBackend()).wrap("infer", mirror).wrap(
        "encode", logging_encode(sink))

    async def run() -> int:
        for rid in ("shadowed", "failed", "plain"):
            request = fakes.request(5)
            request.request_id = rid
            await pipeline.run(request, RequestContext.begin())
        offered_before_the_mirrors = sink.stats().offered
        await asyncio.sleep(0.2)
        return offered_before_the_mirrors

    assert asyncio.run(run()) == 1  # only "plain": the mirrored two wait for their shadow's scores
    stats = sink.close()
    assert stats.written == 3
    rows = {r["request_id"]: r for r in read_request_log(tmp_path).to_pylist()}
    shadowed = rows["shadowed"]
    assert shadowed["shadow_model_version"] == 7 and shadowed["shadow_snapshot_id"] == "s000042"
    np.testing.assert_array_equal(np.array(shadowed["p_ctr_shadow"], np.float32),
                                  np.array(shadowed["p_ctr"], np.float32) * 2)
    np.testing.assert_array_equal(np.array(shadowed["p_cvr_shadow"], np.float32),
                                  np.array(shadowed["p_cvr"], np.float32) / 2)
    for rid in ("failed", "plain"):
        assert rows[rid]["shadow_model_version"] == 0 and rows[rid]["p_ctr_shadow"] == []
        assert rows[rid]["shadow_snapshot_id"] == ""
