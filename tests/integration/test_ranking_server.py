"""The real ranking server in a child process, called through real gRPC channels."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from models.catalog import load_catalog
from protos.adrank.v1 import ranking_pb2, ranking_pb2_grpc
from serving.client import build_request
from serving.process import ServerProcess

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def repo(tiny_run: Path, tmp_path_factory) -> Path:
    """vm v1 (trained) and v2 (a copy with its output bias shifted, so versions are distinguishable),
    plus a corrupt v3 that must be refused while v1/v2 serve."""
    import json

    import onnx
    from onnx import numpy_helper

    from exporters.manifest import seal_manifest, sha256_file

    repo = tmp_path_factory.mktemp("repo")
    shutil.copytree(tiny_run / "model_repository", repo, dirs_exist_ok=True)
    v2 = repo / "vm" / "2"
    shutil.copytree(repo / "vm" / "1", v2)
    model = onnx.load(v2 / "model.onnx")
    for init in model.graph.initializer:
        if init.name == "ctr_head.bias":
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 1.0, init.name))
    onnx.save(model, v2 / "model.onnx")
    manifest = json.loads((v2 / "manifest.json").read_text())
    manifest.update(version=2, sha256=sha256_file(v2 / "model.onnx"))
    (v2 / "manifest.json").write_text(json.dumps(seal_manifest(manifest)))
    v3 = repo / "vm" / "3"
    shutil.copytree(repo / "vm" / "1", v3)
    (v3 / "model.onnx").write_bytes(b"garbage")
    return repo


@pytest.fixture(scope="module")
def server(repo: Path):
    with ServerProcess(["--repository", str(repo), "--max-candidates", "500"]) as srv:
        yield srv
    assert srv.proc.returncode == 0, srv.log_text()[-2000:]


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.target) as ch:
        yield ranking_pb2_grpc.AdRankingStub(ch)


@pytest.fixture(scope="module")
def catalog(tiny_run: Path):
    return load_catalog(tiny_run / "catalog.npz")


def test_scores_200_candidates_in_rank_order(stub, catalog):
    req = build_request(int(catalog["user_id"][3]), 200, catalog, seed=1, request_time_ms=int(catalog["max_ts_ms"][0]))
    resp = stub.Score(req, timeout=5)
    assert len(resp.candidates) == 200
    assert [c.rank for c in resp.candidates] == list(range(1, 201))
    ev = np.array([c.expected_value for c in resp.candidates])
    assert np.all(np.diff(ev) <= 0)
    assert sorted(c.request_index for c in resp.candidates) == list(range(200))
    for c in resp.candidates[:5]:
        cand = req.candidates[c.request_index]
        assert c.ad_id == cand.ad_id
        assert c.expected_value == pytest.approx(cand.bid * c.p_ctr * c.p_cvr, rel=1e-5)
        assert 0 < c.p_ctr < 1 and 0 < c.p_cvr < 1
    assert resp.served_by.model_name == "vm" and resp.served_by.model_version == 2  # newest loadable version
    assert resp.served_by.backend == "embedded" and resp.served_by.fm_version == "none"
    assert resp.timing.total_us > 0 and resp.request_time_ms == req.request_time_ms


def test_pinned_version_is_served_by_that_version(stub, catalog):
    req = build_request(int(catalog["user_id"][0]), 50, catalog, seed=2, request_time_ms=int(catalog["max_ts_ms"][0]))
    req.model.version = 1
    r1 = stub.Score(req, timeout=5)
    req.model.version = 2
    r2 = stub.Score(req, timeout=5)
    assert r1.served_by.model_version == 1 and r2.served_by.model_version == 2
    p1 = {c.ad_id: c.p_ctr for c in r1.candidates}
    p2 = {c.ad_id: c.p_ctr for c in r2.candidates}
    assert all(p2[a] > p1[a] for a in p1), "v2's shifted bias must raise every pCTR"


def _abort(stub, req) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        stub.Score(req, timeout=5)
    return err.value


@pytest.mark.parametrize(
    ("mutate", "code", "text"),
    [
        (lambda r: r.ClearField("candidates"), grpc.StatusCode.INVALID_ARGUMENT, "candidates"),
        (lambda r: [r.candidates.add(ad_id=i, bid=1.0) for i in range(600)], grpc.StatusCode.INVALID_ARGUMENT,
         "limit of 500"),
        (lambda r: setattr(r.candidates[3], "bid", float("nan")), grpc.StatusCode.INVALID_ARGUMENT,
         "candidates[3].bid"),
        (lambda r: setattr(r.candidates[4], "bid", -2.0), grpc.StatusCode.INVALID_ARGUMENT, "candidates[4].bid"),
        (lambda r: setattr(r.candidates[0], "ad_id", -9), grpc.StatusCode.INVALID_ARGUMENT, "candidates[0].ad_id"),
        (lambda r: setattr(r, "user_id", -1), grpc.StatusCode.INVALID_ARGUMENT, "user_id"),
        (lambda r: setattr(r.model, "version", 7), grpc.StatusCode.NOT_FOUND, "model.version"),
        (lambda r: setattr(r.model, "version", 3), grpc.StatusCode.NOT_FOUND, "loaded versions [1, 2]"),
        (lambda r: setattr(r.model, "name", "nope"), grpc.StatusCode.NOT_FOUND, "model.name"),
        (lambda r: r.candidates[0].dense_features.extend([1.0] * 10), grpc.StatusCode.INVALID_ARGUMENT,
         "dense_features"),
    ],
)
def test_bad_requests_get_named_errors_and_server_keeps_serving(stub, catalog, mutate, code, text):
    req = build_request(int(catalog["user_id"][1]), 10, catalog, seed=3)
    mutate(req)
    err = _abort(stub, req)
    assert err.code() == code, err.details()
    assert text in err.details()
    ok = stub.Score(build_request(int(catalog["user_id"][1]), 10, catalog, seed=3), timeout=5)
    assert len(ok.candidates) == 10


def test_oversized_message_is_refused(stub):
    req = ranking_pb2.ScoreRequest(user_id=1, request_id="x" * (5 * 1024 * 1024))
    req.candidates.add(ad_id=1, bid=1.0)
    assert _abort(stub, req).code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_corrupt_version_refused_at_load_and_logged(server):
    assert "vm/3" in server.log_text() and "not loaded" in server.log_text()


def test_health_serving_and_reflection_lists_service(server):
    assert server.health() == health_pb2.HealthCheckResponse.SERVING
    assert server.health("adrank.v1.AdRanking") == health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(server.target) as ch:
        services = ProtoReflectionDescriptorDatabase(ch).get_services()
    assert "adrank.v1.AdRanking" in services and "grpc.health.v1.Health" in services


def test_score_cli_prints_a_ranked_table(server, tiny_run):
    out = subprocess.run([sys.executable, "-m", "adrank", "score", "--target", server.target, "--user", "5",
                          "--candidates", "200", "--catalog", str(tiny_run / "catalog.npz"), "--show", "200"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "200 ads ranked by vm v2" in out.stdout
    ranks = [int(line.split("│")[1]) for line in out.stdout.splitlines() if line.startswith("│")]
    assert ranks == list(range(1, 201))


def test_score_cli_reports_errors_with_code(server, tiny_run):
    out = subprocess.run([sys.executable, "-m", "adrank", "score", "--target", server.target, "--user", "5",
                          "--candidates", "3", "--version", "9", "--catalog", str(tiny_run / "catalog.npz")],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2 and "NOT_FOUND" in out.stderr


def test_top_k_returns_the_best_k_of_all_scored(stub, catalog):
    req = build_request(int(catalog["user_id"][2]), 100, catalog, seed=4, request_time_ms=int(catalog["max_ts_ms"][0]))
    full = stub.Score(req, timeout=5)
    req.top_k = 7
    top = stub.Score(req, timeout=5)
    assert [c.ad_id for c in top.candidates] == [c.ad_id for c in full.candidates[:7]]
    assert [c.rank for c in top.candidates] == list(range(1, 8))
    req.top_k = 0
    err = _abort(stub, req)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("top_k")
