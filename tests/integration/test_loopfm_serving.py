"""A LoopFM model served with FM history from the embedded cache, through the real server process."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2

from models.catalog import load_catalog
from protos.adrank.v1 import ranking_pb2, ranking_pb2_grpc
from serving.client import build_request
from serving.process import ServerProcess


@pytest.fixture(scope="module")
def stub(loopfm_run):
    args = ["--repository", str(loopfm_run["repo"]), "--model", "vm_loopfm", "--cache-dir", str(loopfm_run["cache"])]
    with ServerProcess(args) as srv, grpc.insecure_channel(srv.target) as ch:
        yield ranking_pb2_grpc.AdRankingStub(ch), srv


def _request(loopfm_run, user: int, t_ms: int, n: int = 50) -> ranking_pb2.ScoreRequest:
    catalog = load_catalog(loopfm_run["dir"] / "catalog.npz")
    return build_request(user, n, catalog, seed=user, request_time_ms=t_ms)


def test_user_with_history_is_scored_by_the_ready_version(stub, loopfm_run):
    stub, _ = stub
    ev = loopfm_run["events"]
    user, t = int(ev["user_id"][-1]), int(ev["ts_ms"][-1]) + 1
    resp = stub.Score(_request(loopfm_run, user, t), timeout=5)
    # v2 names an fm_version the cache lacks: unpinned traffic stays on v1
    assert resp.served_by.model_version == 1 and resp.served_by.fm_version == "fm-test01"
    assert ranking_pb2.FLAG_USER_HISTORY_MISSING not in resp.flags
    assert len(resp.candidates) == 50


def test_history_changes_the_scores_and_only_the_past_counts(stub, loopfm_run):
    stub, _ = stub
    ev = loopfm_run["events"]
    user = int(ev["user_id"][-1])
    user_ts = ev["ts_ms"][ev["user_id"] == user]
    before_any = _request(loopfm_run, user, int(user_ts.min()))  # t == first event: nothing strictly before
    late = _request(loopfm_run, user, int(user_ts.max()) + 1)
    r_early = stub.Score(before_any, timeout=5)
    r_late = stub.Score(late, timeout=5)
    assert ranking_pb2.FLAG_USER_HISTORY_MISSING in r_early.flags
    assert ranking_pb2.FLAG_USER_HISTORY_MISSING not in r_late.flags
    p_early = {c.ad_id: c.p_ctr for c in r_early.candidates}
    p_late = {c.ad_id: c.p_ctr for c in r_late.candidates}
    assert any(abs(p_early[a] - p_late[a]) > 1e-6 for a in p_early)


def test_unknown_user_is_scored_and_flagged_degraded(stub, loopfm_run):
    stub, srv = stub
    resp = stub.Score(_request(loopfm_run, 10**9, int(loopfm_run["events"]["ts_ms"][-1])), timeout=5)
    assert len(resp.candidates) == 50 and all(0 < c.p_ctr < 1 for c in resp.candidates)
    assert ranking_pb2.FLAG_USER_HISTORY_MISSING in resp.flags


def test_version_without_its_fm_embeddings_is_refused(stub, loopfm_run):
    stub, srv = stub
    req = _request(loopfm_run, 1, int(loopfm_run["events"]["ts_ms"][-1]))
    req.model.version = 2
    with pytest.raises(grpc.RpcError) as err:
        stub.Score(req, timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "fm-absent" in err.value.details()
    assert "vm_loopfm/2 loaded but not ready" in srv.log_text()


def test_server_without_cache_refuses_loopfm_models(loopfm_run):
    with ServerProcess(["--repository", str(loopfm_run["repo"]), "--model", "vm_loopfm"],
                       require_serving=False) as srv, grpc.insecure_channel(srv.target) as ch:
        # no version can serve, so health says so (a balancer sends it nothing) ...
        assert srv.health() == health_pb2.HealthCheckResponse.NOT_SERVING
        assert srv.health("adrank.liveness") == health_pb2.HealthCheckResponse.SERVING
        # ... and a call that arrives anyway is refused with the reason
        with pytest.raises(grpc.RpcError) as err:
            ranking_pb2_grpc.AdRankingStub(ch).Score(_request(loopfm_run, 1, int(loopfm_run["events"]["ts_ms"][-1])),
                                                      timeout=5)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no embedding cache" in err.value.details()


def test_cache_timing_is_reported(stub, loopfm_run):
    stub, _ = stub
    ev = loopfm_run["events"]
    resp = stub.Score(_request(loopfm_run, int(ev["user_id"][0]), int(ev["ts_ms"][-1])), timeout=5)
    assert resp.timing.cache_us > 0 and resp.timing.total_us >= resp.timing.cache_us
    assert np.isfinite(resp.candidates[0].expected_value)
