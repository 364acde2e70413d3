"""Two `adrank serve` replicas sharing a Redis registry on a real redis-server, each under its own load:
the analysis pools both replicas' windows, exactly one replica decides, and when it is killed the other
takes the rollout over within the lease.

- A bad canary (p_ctr × 3) is rolled back once: one audit entry, not one per replica, and the deciding
  windows counted calls from both replicas (the pooled count is the sum of the per-replica counts, and
  both are a real share of what the clients saw answered on the canary arm).
- A good canary's leader is SIGKILLed after its first step: the other replica takes the analysis over
  within the lease's expiry (+ a poll), continues from the stored step, and promotes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from rollout_versions import copy_version
from score_loop import ScoreLoop

from embedding_cache.redis_local import LocalRedis, RedisNotInstalledError
from models.catalog import load_catalog
from serving.process import ServerProcess
from serving.rollout.redis_registry import RedisRegistry
from serving.security.auth import hash_token

pytestmark = pytest.mark.slow  # two servers and a redis-server, two rollouts (~30 s)

TOKEN = "pooled-operator-token-0123456789"
AUTH = [("authorization", f"Bearer {TOKEN}")]
LEASE_S, INTERVAL_S = 2.0, 1.0
CHECKS = """
[checks]
min_requests = 10
max_error_rate = 0.0
max_p99_latency_ratio = 100.0
max_psi = 10.0
p_ctr_ratio = [0.8, 1.25]

[preflight]
max_embedding_age_s = 1e12
"""


def replica_load(name: str, srv: ServerProcess, catalog, counts: Counter) -> ScoreLoop:
    """Score calls against one replica in a loop; answers counted by (replica, arm, version)."""
    def count(r) -> None:
        counts[(name, r.served_by.arm, r.served_by.model_version)] += 1
    return ScoreLoop(srv, catalog, metadata=AUTH, users=200, on_answer=count)


def _cli(srv: ServerProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adrank", "rollout", *args, "--target", srv.target, "--actor", "ops"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "ADRANK_TOKEN": TOKEN})


@pytest.fixture(scope="module")
def fleet(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory):
    try:
        redis_server = LocalRedis()
    except RedisNotInstalledError as exc:
        pytest.skip(str(exc))
    d = tmp_path_factory.mktemp("pooled")
    repo = d / "repo"
    shutil.copytree(tiny_run / "model_repository", repo)
    (d / "tokens").write_text(f"{hash_token(TOKEN)} admin,score operator\n")
    args = ["--repository", str(repo), "--rollout-registry", redis_server.url, "--auth-tokens", str(d / "tokens"),
            "--rollout-poll-s", "0.2", "--rollout-unload-grace-s", "1", "--rollout-lease-s", str(LEASE_S),
            "--drain-delay-s", "0"]
    registry = RedisRegistry(redis_server.url)
    try:
        with ServerProcess(args) as a, ServerProcess(args) as b:
            copy_version(repo, "vm", 1, 2, p_ctr_factor=3.0)
            copy_version(repo, "vm", 1, 3)
            yield {"a": a, "b": b, "dir": d, "registry": registry, "catalog": load_catalog(tiny_run / "catalog.npz")}
    finally:
        registry.close()
        redis_server.stop()


def _entries(registry: RedisRegistry, version: int) -> list:
    return [e for e in registry.audit("vm", version) if e.version == version]


def _wait(pred, timeout_s: float, poll_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(poll_s)
    return pred()


def test_a_bad_canary_is_rolled_back_once_on_both_replicas_windows(fleet):
    a, b, registry = fleet["a"], fleet["b"], fleet["registry"]
    spec = fleet["dir"] / "bad.toml"
    spec.write_text(f'model = "vm"\nversion = 2\nsteps = [50]\ninterval_s = {INTERVAL_S}\nthreshold = 2\n' + CHECKS)
    counts: Counter = Counter()
    loads = [replica_load("a", a, fleet["catalog"], counts), replica_load("b", b, fleet["catalog"], counts)]
    try:
        started = _cli(a, "start", str(spec))
        assert started.returncode == 0, started.stderr
        rolled = _wait(lambda: [e for e in _entries(registry, 2) if e.to_state.value == "rolled_back"],
                       2 * INTERVAL_S + 10)
    finally:
        for load in loads:
            load.close()
    assert len(rolled) == 1, [e.reason for e in rolled]  # one decision, not one per replica
    assert "p_ctr" in rolled[0].reason
    time.sleep(3 * INTERVAL_S)  # nobody else decides later either
    assert len([e for e in _entries(registry, 2) if e.to_state.value == "rolled_back"]) == 1
    window = rolled[0].metrics["window"]
    per_replica = window["replicas"]
    assert len(per_replica) == 2, per_replica
    assert window["canary_calls"] == sum(r.get("canary", 0) for r in per_replica.values())
    assert window["live_calls"] == sum(r.get("live", 0) for r in per_replica.values())
    assert all(r.get("canary", 0) > 0 and r.get("live", 0) > 0 for r in per_replica.values()), per_replica
    answered = {name: counts[(name, "canary", 2)] for name in ("a", "b")}
    judged = sorted(r["canary"] for r in per_replica.values())
    assert max(judged) < window["canary_calls"] <= sum(answered.values()), (window, answered)
    assert all(load.failed == 0 for load in loads)
    print(f"rolled back on pooled windows: canary calls per replica {per_replica}, clients saw {answered}")


def test_the_analysis_survives_its_leader_and_one_other_replica_takes_over(fleet):
    a, b, registry = fleet["a"], fleet["b"], fleet["registry"]
    spec = fleet["dir"] / "good.toml"
    spec.write_text(f'model = "vm"\nversion = 3\nsteps = [20, 40, 60, 80]\ninterval_s = {INTERVAL_S}\n'
                    'threshold = 3\n' + CHECKS)
    counts: Counter = Counter()
    load_b = replica_load("b", b, fleet["catalog"], counts)
    load_a = replica_load("a", a, fleet["catalog"], counts)
    try:
        started = _cli(a, "start", str(spec))
        assert started.returncode == 0, started.stderr
        first = _wait(lambda: [e for e in _entries(registry, 3) if "window" in e.metrics], 15)
        assert first, "no analysis decision from the leader"
        leader = first[0].metrics["window"]["decided_by"]
        load_a.close()
        a.proc.kill()  # SIGKILL: no graceful hand-over, the lease must expire
        killed_at = time.monotonic()
        led = _wait(lambda: json.loads(registry.get_shared("rollout:")["rollout:vm"])["leader"] != leader, 15, 0.05)
        took_s = time.monotonic() - killed_at
        assert led, "no replica took the analysis over"
        taken = _wait(lambda: [e for e in _entries(registry, 3)
                               if "window" in e.metrics and e.metrics["window"]["decided_by"] != leader], 15)
        assert taken, "the new leader made no decision"
        promoted = _wait(lambda: [e for e in _entries(registry, 3) if e.to_state.value == "live"], 20)
    finally:
        load_a.close()
        load_b.close()
    assert took_s <= LEASE_S + 1.5, took_s  # the lease's expiry, plus a poll (0.2 s) and scheduling slack
    assert promoted, [e.reason for e in _entries(registry, 3)]
    deciders = [e.metrics["window"]["decided_by"] for e in _entries(registry, 3) if "window" in e.metrics]
    assert deciders[0] == leader and deciders[-1] != leader and len(set(deciders)) == 2
    weights = [e.weight for e in _entries(registry, 3) if e.weight is not None]
    assert weights == sorted(weights) and weights[-1] == 80.0  # continued from the stored step, never restarted
    assert load_b.failed == 0
    print(f"leader killed; another replica took the analysis over {took_s:.1f} s later (lease {LEASE_S} s), "
          "decided, and promoted")
