"""Rollouts on a real `adrank serve` with a SQLite registry, through real channels and the CLI: the admin
API is closed without the admin scope, a good canary steps up and is promoted, a deliberately bad one
(p_ctr × 3) is rolled back automatically within threshold × interval with the reason audited, and the
steady load beside it sees no failed request. Versions are hot-loaded: v2 and v3 are exported into the
repository after the server started."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import grpc
import pytest
from rollout_versions import copy_version

from models.catalog import load_catalog
from protos.adrank.v1 import ranking_pb2_grpc, rollout_pb2, rollout_pb2_grpc
from serving.client import build_request
from serving.process import ServerProcess
from serving.security.auth import hash_token

SCORE_TOKEN, ADMIN_TOKEN = "score-token-0123456789", "admin-token-9876543210"
INTERVAL_S, THRESHOLD = 1.0, 2
SPEC = """model = "vm"
version = {version}
steps = [20, 50]
interval_s = {interval}
threshold = {threshold}

[checks]
min_requests = 5
max_psi = 1.0
p_ctr_ratio = [0.8, 1.25]
max_p99_latency_ratio = 20.0
max_error_rate = 0.0

[preflight]
max_embedding_age_s = 1e12
"""


def _auth(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


@pytest.fixture(scope="module")
def served(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("rollout")
    repo = d / "repo"
    shutil.copytree(tiny_run / "model_repository", repo)
    tokens = d / "tokens"
    tokens.write_text(f"{hash_token(SCORE_TOKEN)} score ranker\n{hash_token(ADMIN_TOKEN)} admin,score operator\n")
    args = ["--repository", str(repo), "--rollout-registry", str(d / "state"), "--auth-tokens", str(tokens),
            "--rollout-poll-s", "0.2", "--rollout-unload-grace-s", "1"]
    with ServerProcess(args) as srv:
        # exported while the server runs: only the registry makes them load
        copy_version(repo, "vm", 1, 2)
        copy_version(repo, "vm", 1, 3, p_ctr_factor=3.0)
        yield {"srv": srv, "repo": repo, "dir": d, "catalog": load_catalog(tiny_run / "catalog.npz")}


class Load:
    """Score calls in a loop over 3,000 users on its own channel; every outcome kept, by user."""

    def __init__(self, srv: ServerProcess, catalog) -> None:
        self.srv, self.catalog = srv, catalog
        self.stop, self.failed = threading.Event(), []
        self.by_user: dict[int, list[tuple[int, str]]] = defaultdict(list)
        self.calls = 0
        ts = int(catalog["max_ts_ms"][0])
        self.requests = [build_request(u, 20, catalog, seed=u, request_time_ms=ts) for u in range(64)]
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.srv.channel() as ch:
            stub = ranking_pb2_grpc.AdRankingStub(ch)
            i = 0
            while not self.stop.is_set():
                user = (i * 7919) % 3000
                req = self.requests[i % len(self.requests)]
                req.user_id = user
                i += 1
                try:
                    resp = stub.Score(req, timeout=5, metadata=_auth(SCORE_TOKEN))
                    self.by_user[user].append((resp.served_by.model_version, resp.served_by.arm))
                except grpc.RpcError as exc:
                    self.failed.append(f"{exc.code().name}: {exc.details()}")
                self.calls += 1

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def _admin(srv: ServerProcess):
    ch = srv.channel()
    return ch, rollout_pb2_grpc.RolloutAdminStub(ch)


def _wait_phase(stub, phases: set[str], timeout_s: float) -> rollout_pb2.RolloutStatus:
    deadline = time.monotonic() + timeout_s
    while True:
        s = stub.Status(rollout_pb2.RolloutTarget(model="vm"), timeout=5, metadata=_auth(ADMIN_TOKEN))
        if s.phase in phases or time.monotonic() > deadline:
            return s
        time.sleep(0.1)


def _cli(srv: ServerProcess, *args: str, token: str | None = ADMIN_TOKEN) -> subprocess.CompletedProcess:
    env = {"ADRANK_TOKEN": token} if token else {}
    import os

    return subprocess.run([sys.executable, "-m", "adrank", "rollout", *args, "--target", srv.target],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **env})


def test_every_rollout_call_is_refused_without_the_admin_scope(served):
    ch, stub = _admin(served["srv"])
    target = rollout_pb2.RolloutTarget(model="vm")
    calls = {"Start": rollout_pb2.StartRolloutRequest(spec_toml=SPEC.format(version=2, interval=1, threshold=2)),
             "Shadow": rollout_pb2.ShadowRequest(model="vm", version=2, sample_rate=0.5),
             "Stage": rollout_pb2.StageRequest(model="vm", version=2),
             **{m: target for m in ("Status", "Promote", "Pause", "Resume", "Rollback", "Abort", "History")}}
    assert set(calls) == set(rollout_pb2.DESCRIPTOR.services_by_name["RolloutAdmin"].methods_by_name)
    with ch:
        for method, request in calls.items():
            for metadata, code in ((None, grpc.StatusCode.UNAUTHENTICATED),
                                   (_auth("not-a-token"), grpc.StatusCode.UNAUTHENTICATED),
                                   (_auth(SCORE_TOKEN), grpc.StatusCode.PERMISSION_DENIED)):
                with pytest.raises(grpc.RpcError) as info:
                    getattr(stub, method)(request, timeout=5, metadata=metadata)
                assert info.value.code() == code, (method, metadata)
    result = _cli(served["srv"], "status", "--model", "vm", token=SCORE_TOKEN)
    assert result.returncode == 2 and "PERMISSION_DENIED" in result.stderr
    # nothing moved: v1 is still the only live version, v2 and v3 unregistered
    status = _cli(served["srv"], "status", "--model", "vm", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["live_version"] == "1"


def test_good_canary_is_promoted_then_bad_one_rolled_back_with_no_failed_request(served):
    srv, d = served["srv"], served["dir"]
    ch, stub = _admin(srv)
    with ch, Load(srv, served["catalog"]) as load:
        time.sleep(1.0)
        spec = d / "good.toml"
        spec.write_text(SPEC.format(version=2, interval=INTERVAL_S, threshold=THRESHOLD))
        started = _cli(srv, "start", str(spec), "--reason", "integration test")
        assert started.returncode == 0, started.stderr
        assert "canary v2 at 20%" in started.stdout
        s = _wait_phase(stub, {"promoted", "rolled_back"}, 30)
        assert s.phase == "promoted", s
        assert [w.action for w in s.windows][-1] == "promote" and s.live_version == 2
        assert {w.weight for w in s.windows if w.action == "step_up"} == {20.0}
        shown = _cli(srv, "status", "--model", "vm")
        assert shown.returncode == 0 and "phase promoted" in shown.stdout and "weight %" in shown.stdout
        calls_before_bad = load.calls
        by_user_good = {u: list(seen) for u, seen in load.by_user.items()}

        bad = d / "bad.toml"
        bad.write_text(SPEC.format(version=3, interval=INTERVAL_S, threshold=THRESHOLD))
        started = _cli(srv, "start", str(bad))
        assert started.returncode == 0, started.stderr
        s = _wait_phase(stub, {"promoted", "rolled_back"}, 30)
        assert s.phase == "rolled_back", s
        assert s.live_version == 2 and s.canary_version == 0
        assert s.windows[-1].action == "rollback" and s.failed_windows == THRESHOLD, s
        time.sleep(1.0)
    assert load.failed == [], load.failed[:5]
    assert load.calls > calls_before_bad > 100
    # during the good rollout no user came back from v2 to v1: canary users stayed on the canary
    for user, seen in by_user_good.items():
        versions = [v for v, _ in seen]
        assert versions == sorted(versions), (user, seen)
    arms = {arm for seen in by_user_good.values() for _, arm in seen}
    assert {"live", "canary"} <= arms
    history = _cli(srv, "history", "--model", "vm", "--json")
    entries = json.loads(history.stdout)["entries"]
    last = [e for e in entries if e["version"] == "3"][-1]
    assert last["to_state"] == "rolled_back" and "p_ctr" in last["reason"], last
    # out of traffic within threshold × interval of entering the canary (audit times, the server's clock),
    # plus half a second for the analysis task's scheduling on a busy host
    entered = [e for e in entries if e["version"] == "3" and e["to_state"] == "canary"][0]
    took_s = (int(last["at_ms"]) - int(entered["at_ms"])) / 1000
    print(f"bad canary rolled back {took_s:.2f} s after entering the canary")
    assert took_s <= THRESHOLD * INTERVAL_S + 0.5, took_s
    assert json.loads(last["metrics_json"])["p_ctr_ratio"]["status"] == "failed"
    promoted = [e for e in entries if e["version"] == "2" and e["to_state"] == "live"]
    assert promoted and promoted[0]["actor"]


def test_rolled_back_version_is_unloaded_once_no_route_points_at_it(served):
    """After the runs above v3 is rolled back: it leaves the backend after the grace. v1, retired but
    the version a rollback of live v2 would restore, stays loaded; v2 serves."""
    ch, stub = _admin(served["srv"])
    with ch:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            s = stub.Status(rollout_pb2.RolloutTarget(model="vm"), timeout=5, metadata=_auth(ADMIN_TOKEN))
            loaded = {v.version: v.loaded for v in s.versions}
            if not loaded.get(3, True):
                break
            time.sleep(0.2)
    states = {v.version: v.state for v in s.versions}
    assert (states[1], states[2], states[3]) == ("retired", "live", "rolled_back"), s
    assert (loaded[1], loaded[2], loaded[3]) == (True, True, False), s


def test_shadow_scores_a_sample_of_live_requests_off_the_response_path(served):
    """v3 (p_ctr × 3) shadows live v2 at 50 %: callers only ever get v2; the pairs show the bias."""
    srv = served["srv"]
    started = _cli(srv, "shadow", "--model", "vm", "--version", "3", "--sample-rate", "0.5")
    assert started.returncode == 0, started.stderr
    assert "shadow v3 sampling 0.5" in started.stdout
    with Load(srv, served["catalog"]) as load:
        time.sleep(3.0)
    assert load.failed == [] and load.calls > 50
    served_versions = {seen for user in load.by_user.values() for seen in user}
    assert served_versions == {(2, "live")}
    ch, stub = _admin(srv)
    with ch:
        s = stub.Status(rollout_pb2.RolloutTarget(model="vm"), timeout=5, metadata=_auth(ADMIN_TOKEN))
    assert s.shadow_version == 3 and s.shadow.pairs >= 0.3 * load.calls, (s.shadow, load.calls)
    # a monotone rescaling keeps the order (ties only where × 3 reaches the cap) but moves every p_ctr
    assert s.shadow.rank_correlation > 0.9 and s.shadow.top_k_overlap > 0.8
    assert s.shadow.mean_abs_delta_p_ctr > 0.01
    shown = _cli(srv, "status", "--model", "vm")
    assert "paired requests" in shown.stdout
    aborted = _cli(srv, "abort", "--model", "vm", "--reason", "seen enough")
    assert aborted.returncode == 0, aborted.stderr
    assert "shadow" not in aborted.stdout.splitlines()[1]


def test_stage_loads_a_version_with_no_route_at_it(served):
    """`adrank rollout stage`: v4 exported now is registered, loaded and warmed, and no caller meets it."""
    srv = served["srv"]
    copy_version(served["repo"], "vm", 1, 4)
    staged = _cli(srv, "stage", "--model", "vm", "--version", "4", "--reason", "ahead of the shadow")
    assert staged.returncode == 0, staged.stderr
    assert "vm/4: staged, loaded and warmed here" in staged.stdout and "v4    staged" in staged.stdout, staged.stdout
    status = json.loads(_cli(srv, "status", "--model", "vm", "--json").stdout)
    v4 = next(v for v in status["versions"] if v["version"] == "4")
    assert v4["state"] == "staged" and v4["loaded"], v4
    with Load(srv, served["catalog"]) as load:
        time.sleep(1.0)
    assert load.failed == [] and load.calls > 10
    assert {seen for user in load.by_user.values() for seen in user} == {(2, "live")}
    history = _cli(srv, "history", "--model", "vm").stdout
    assert "v4    - → staged" in history and "ahead of the shadow" in history, history


def test_without_a_token_file_the_rollout_api_is_closed(tiny_run: Path, tmp_path: Path):
    """A registry but no --auth-tokens: scoring works, every rollout call is UNAUTHENTICATED."""
    args = ["--repository", str(tiny_run / "model_repository"), "--rollout-registry", str(tmp_path / "state")]
    with ServerProcess(args) as srv, srv.channel() as ch:
        stub = rollout_pb2_grpc.RolloutAdminStub(ch)
        for method in ("Status", "Promote", "Rollback", "Abort", "History"):
            with pytest.raises(grpc.RpcError) as info:
                getattr(stub, method)(rollout_pb2.RolloutTarget(model="vm"), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and "--auth-tokens" in info.value.details()
        catalog = load_catalog(tiny_run / "catalog.npz")
        resp = ranking_pb2_grpc.AdRankingStub(ch).Score(build_request(3, 5, catalog, seed=3), timeout=5)
        assert (resp.served_by.model_version, resp.served_by.arm) == (1, "live")
