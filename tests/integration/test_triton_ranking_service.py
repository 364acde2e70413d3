"""The real gRPC ranking service (serving.server.RankingServer) with backend=TritonBackend, against
the same service with the embedded backend: same request, same scores, `served_by.backend` says who."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import triton_fixtures

from protos.adrank.v1 import ranking_pb2_grpc
from serving.backends.embedded import EmbeddedBackend
from serving.backends.triton import TritonBackend
from serving.client import build_request
from serving.config import ServerConfig
from serving.server import RankingServer

MODEL = triton_fixtures.MODEL
triton_repo, triton_server = triton_fixtures.triton_repo, triton_fixtures.triton_server


async def _score(config: ServerConfig, backend, requests) -> list:
    server = RankingServer(config, backend)
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ranking_pb2_grpc.AdRankingStub(channel)
            return [await stub.Score(r, timeout=5) for r in requests]
    finally:
        await server.stop(0.5)


def test_score_through_grpc_service_with_triton_backend(triton_server, triton_repo):
    base = dict(port=0, model_repository=str(triton_repo), default_model=MODEL)
    requests = []
    for version in (None, 1):
        req = build_request(7, 200, None, seed=11, request_time_ms=1_700_000_000_000, model=MODEL, version=version)
        requests.append(req)
    tri_cfg = ServerConfig(**base, backend="triton", triton_url=triton_server.grpc_url)
    emb_cfg = ServerConfig(**base)
    via_triton = asyncio.run(_score(tri_cfg, TritonBackend(triton_server.grpc_url, triton_repo), requests))
    via_embedded = asyncio.run(_score(emb_cfg, EmbeddedBackend(triton_repo), requests))
    for t, e in zip(via_triton, via_embedded, strict=True):
        assert t.served_by.backend == "triton" and e.served_by.backend == "embedded"
        assert t.served_by.model_version == e.served_by.model_version
        assert len(t.candidates) == 200
        pt = {c.ad_id: (c.p_ctr, c.p_cvr) for c in t.candidates}
        pe = {c.ad_id: (c.p_ctr, c.p_cvr) for c in e.candidates}
        assert pt.keys() == pe.keys()
        np.testing.assert_allclose(np.array([pt[a] for a in pe]), np.array(list(pe.values())), atol=1e-6, rtol=0)
    assert via_triton[1].served_by.model_version == 1


def test_bench_reports_ratios_to_raw_onnxruntime(triton_server, triton_repo, tmp_path):
    import json

    from loadtests.bench_triton import main

    out = tmp_path / "bench.json"
    assert main(["--repository", str(triton_repo), "--model", MODEL, "--triton-url", triton_server.grpc_url,
                 "--requests", "30", "--json", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"raw", "embedded_infer", "triton_infer", "embedded_score", "triton_score"}
    assert all(r["n"] == 30 and r["p99_ms"] >= r["p50_ms"] > 0 for r in results.values())
