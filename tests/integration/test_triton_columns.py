"""ScoreColumns with the Triton backend: the columnar request reaches a real tritonserver as the same
tensors rows do (one Triton call, no per-candidate work), so rows and columns rank identically."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import triton_fixtures

from protos.adrank.v1 import ranking_pb2_grpc
from serving.backends.triton import TritonBackend
from serving.client import build_request, ranked_arrays, to_columns
from serving.config import ServerConfig
from serving.server import RankingServer

MODEL = triton_fixtures.MODEL
triton_repo, triton_server = triton_fixtures.triton_repo, triton_fixtures.triton_server


async def _rows_and_columns(config: ServerConfig, backend, request):
    server = RankingServer(config, backend)
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ranking_pb2_grpc.AdRankingStub(channel)
            return await stub.Score(request, timeout=5), await stub.ScoreColumns(to_columns(request), timeout=5)
    finally:
        await server.stop(0.5)


def test_rows_and_columns_through_triton_rank_identically(triton_server, triton_repo):
    config = ServerConfig(port=0, model_repository=str(triton_repo), default_model=MODEL, backend="triton",
                          triton_url=triton_server.grpc_url)
    request = build_request(9, 200, None, seed=12, request_time_ms=1_700_000_000_000, model=MODEL, version=1)
    rows, cols = asyncio.run(_rows_and_columns(config, TritonBackend(triton_server.grpc_url, triton_repo), request))
    got = ranked_arrays(cols)
    assert cols.served_by.backend == rows.served_by.backend == "triton"
    assert got["ad_id"].tolist() == [c.ad_id for c in rows.candidates]
    np.testing.assert_array_equal(got["p_ctr"], np.array([c.p_ctr for c in rows.candidates], np.float32))
    np.testing.assert_array_equal(got["expected_value"], [c.expected_value for c in rows.candidates])
