"""The gRPC servicer over a real grpc.aio server in this process: bytes in, the pipeline, a status
out. Includes the wrapped-stage example: a recorder around infer, installed through the public API."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
import serving_fakes as fakes

from protos.adrank.v1 import ranking_pb2, ranking_pb2_grpc
from serving.config import ServerConfig
from serving.errors import BackendTimeout, InferenceFailed
from serving.pipeline import ModelInputs, Scores
from serving.server import RankingServer

SCORE = "/adrank.v1.AdRanking/Score"


async def _call(server: RankingServer, requests: list) -> list:
    """Each request (a message, or raw bytes) → its response or (code, details)."""
    port = await server.start()
    out = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            raw = channel.unary_unary(SCORE, response_deserializer=ranking_pb2.ScoreResponse.FromString)
            stub = ranking_pb2_grpc.AdRankingStub(channel)
            for req in requests:
                try:
                    out.append(await (raw(req, timeout=5) if isinstance(req, bytes) else stub.Score(req, timeout=5)))
                except grpc.aio.AioRpcError as err:
                    out.append((err.code(), err.details()))
    finally:
        await server.stop(0)
    return out


def _server(backend=None) -> RankingServer:
    return RankingServer(ServerConfig(port=0), backend or fakes.FakeBackend())


def test_a_stage_wrapped_through_the_public_api_sees_every_infer_input():
    recorded: list[ModelInputs] = []

    def recording(infer):
        async def stage(inputs: ModelInputs, ctx) -> Scores:
            recorded.append(inputs)
            return await infer(inputs, ctx)
        return stage

    server = _server()
    server.service.pipeline = server.service.pipeline.wrap("infer", recording)
    (response,) = asyncio.run(_call(server, [fakes.request(6)]))
    assert len(recorded) == 1 and recorded[0].handle.name == "vm" and recorded[0].request.ad_id.size == 6
    p_ctr, _ = fakes.scores(recorded[0].tensors)  # the scores returned are the model's on what was recorded
    assert sorted(c.p_ctr for c in response.candidates) == pytest.approx(sorted(p_ctr.tolist()))
    assert response.timing.total_us > 0 and response.timing.inference_us >= 0


def test_response_timing_and_metrics_are_filled():
    server = _server()
    (response,) = asyncio.run(_call(server, [fakes.request(3)]))
    t = response.timing
    assert t.total_us >= t.inference_us + t.features_us and t.cache_us == 0
    sample = server.service.metrics.registry.get_sample_value
    assert sample("adrank_score_requests_total", {"model": "vm", "version": "1", "code": "OK"}) == 1
    assert sample("adrank_scored_candidates_total", {"model": "vm"}) == 3
    assert sample("adrank_stage_latency_seconds_count", {"stage": "decode"}) == 1


def test_each_failure_leaves_with_its_own_status_and_is_counted():
    class Failing(fakes.FakeBackend):
        async def infer(self, handle, inputs):
            if len(inputs["dense"]) == 2:
                raise BackendTimeout("vm/1: Triton DEADLINE_EXCEEDED: Deadline Exceeded")
            if len(inputs["dense"]) == 3:
                raise InferenceFailed("vm/1: onnxruntime Fail: bad node")
            raise RuntimeError("a bug")

    server = _server(Failing())
    bad_top_k = fakes.request(1, top_k=0)
    got = asyncio.run(_call(server, [b"\xff\xff\xff", bad_top_k, fakes.request(1, model={"version": 5}),
                                     fakes.request(2), fakes.request(3), fakes.request(4)]))
    assert got[0][0] == grpc.StatusCode.INVALID_ARGUMENT and "not a valid adrank.v1.ScoreRequest" in got[0][1]
    assert got[1] == (grpc.StatusCode.INVALID_ARGUMENT, "top_k: must be >= 1 when set, got 0")
    assert got[2][0] == grpc.StatusCode.NOT_FOUND and "no version 5" in got[2][1]
    assert got[3] == (grpc.StatusCode.DEADLINE_EXCEEDED, "vm/1: Triton DEADLINE_EXCEEDED: Deadline Exceeded")
    assert got[4] == (grpc.StatusCode.INTERNAL, "vm/1: onnxruntime Fail: bad node")
    assert got[5] == (grpc.StatusCode.INTERNAL, "internal error while scoring; see server log")
    sample = server.service.metrics.registry.get_sample_value
    # the version label is the resolved one once route ran, "?" before
    for code, version, n in (("INVALID_ARGUMENT", "?", 2), ("NOT_FOUND", "?", 1), ("DEADLINE_EXCEEDED", "1", 1),
                             ("INTERNAL", "1", 2)):
        assert sample("adrank_score_requests_total", {"model": "vm", "version": version, "code": code}) == n
        assert sample("adrank_score_latency_seconds_count", {"model": "vm", "code": code}) == n


def test_a_message_handed_in_process_is_scored_like_its_bytes():
    from serving.pipeline import Pipeline, RequestContext

    pipeline = Pipeline.build(ServerConfig(), fakes.FakeBackend())
    req = fakes.request(4)

    async def both():
        return (await pipeline.run(req, RequestContext.begin()),
                await pipeline.run(req.SerializeToString(), RequestContext.begin()))

    a, b = asyncio.run(both())
    assert [c.ad_id for c in a.candidates] == [c.ad_id for c in b.candidates]
    np.testing.assert_array_equal([c.p_ctr for c in a.candidates], [c.p_ctr for c in b.candidates])


def test_the_callers_deadline_reaches_the_context():
    seen = []

    def deadline(rank):
        async def stage(scores, ctx):
            seen.append(ctx.remaining_s())
            return await rank(scores, ctx)
        return stage

    server = _server()
    server.service.pipeline = server.service.pipeline.wrap("rank", deadline)
    asyncio.run(_call(server, [fakes.request(1)]))
    assert 0 < seen[0] <= 5.1
