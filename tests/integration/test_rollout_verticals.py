"""Two verticals in one server with a rollout registry, each pinned to its own fm_version and both served
from one embedded cache at once; and preflight through the admin API: a version whose fm_version the
cache lacks is refused with FAILED_PRECONDITION naming it, while the live version keeps serving."""

from __future__ import annotations

import shutil

import grpc
import numpy as np
import pytest
from rollout_versions import copy_version

from models.catalog import load_catalog
from models.embed import publish_codes
from protos.adrank.v1 import ranking_pb2, ranking_pb2_grpc, rollout_pb2, rollout_pb2_grpc
from serving.client import build_request
from serving.process import ServerProcess
from serving.security.auth import hash_token

TOKEN = "operator-token-0123456789"
SPEC = """model = "vm_loopfm"
version = 2
steps = [50]
interval_s = 1

[preflight]
max_embedding_age_s = 1e12
"""


@pytest.fixture(scope="module")
def served(loopfm_run, tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("verticals")
    repo, cache = d / "repo", d / "cache"
    shutil.copytree(loopfm_run["repo"], repo)
    shutil.copytree(loopfm_run["cache"], cache)
    # vertical B: the same graph reading FM codes of fm-test02, published beside fm-test01 in the one cache
    events, codes = loopfm_run["events"], loopfm_run["codes"]
    publish_codes(cache, "fm-test02", events, np.arange(len(events)), -codes, codec="int8")
    copy_version(repo, "vm_loopfm", 1, 1, new_name="vm_b", fm_version="fm-test02")
    (d / "tokens").write_text(f"{hash_token(TOKEN)} admin,score operator\n")
    args = ["--repository", str(repo), "--model", "vm_loopfm", "--cache-dir", str(cache),
            "--rollout-registry", str(d / "state"), "--auth-tokens", str(d / "tokens"), "--rollout-poll-s", "0.2"]
    with ServerProcess(args) as srv, srv.channel() as ch:
        yield {"score": ranking_pb2_grpc.AdRankingStub(ch), "admin": rollout_pb2_grpc.RolloutAdminStub(ch),
               "catalog": load_catalog(loopfm_run["dir"] / "catalog.npz"), "events": events}


AUTH = [("authorization", f"Bearer {TOKEN}")]


def _score(served, model: str) -> ranking_pb2.ScoreResponse:
    ev = served["events"]
    user, t = int(ev["user_id"][-1]), int(ev["ts_ms"][-1]) + 1
    req = build_request(user, 30, served["catalog"], seed=user, request_time_ms=t, model=model)
    return served["score"].Score(req, timeout=5, metadata=AUTH)


def test_two_verticals_each_answer_with_their_own_fm_version_from_one_cache(served):
    a, b = _score(served, "vm_loopfm"), _score(served, "vm_b")
    assert (a.served_by.model_name, a.served_by.fm_version, a.served_by.arm) == ("vm_loopfm", "fm-test01", "live")
    assert (b.served_by.model_name, b.served_by.fm_version, b.served_by.arm) == ("vm_b", "fm-test02", "live")
    for resp in (a, b):  # both found the user's codes under their own fm_version
        assert ranking_pb2.FLAG_USER_HISTORY_MISSING not in resp.flags
    pa = {c.ad_id: c.p_ctr for c in a.candidates}
    pb = {c.ad_id: c.p_ctr for c in b.candidates}
    assert pa.keys() == pb.keys() and max(abs(pa[k] - pb[k]) for k in pa) > 1e-4  # other codes, other scores
    for model, fm in (("vm_loopfm", "fm-test01"), ("vm_b", "fm-test02")):
        s = served["admin"].Status(rollout_pb2.RolloutTarget(model=model), timeout=5, metadata=AUTH)
        assert s.live_version == 1 and [v.fm_version for v in s.versions] == [fm]


def test_preflight_refuses_a_version_whose_fm_version_is_absent_and_live_keeps_serving(served):
    with pytest.raises(grpc.RpcError) as info:
        served["admin"].Start(rollout_pb2.StartRolloutRequest(spec_toml=SPEC, actor="ci"), timeout=10, metadata=AUTH)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "fm-absent" in info.value.details() and "vm_loopfm/2" in info.value.details()
    s = served["admin"].Status(rollout_pb2.RolloutTarget(model="vm_loopfm"), timeout=5, metadata=AUTH)
    assert (s.live_version, s.canary_version, s.phase) == (1, 0, "idle")
    assert [v.version for v in s.versions] == [1]  # the refused version was not even registered
    for _ in range(20):
        resp = _score(served, "vm_loopfm")
        assert (resp.served_by.model_version, resp.served_by.fm_version) == (1, "fm-test01")
