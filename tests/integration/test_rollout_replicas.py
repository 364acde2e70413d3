"""Two replicas sharing one registry file: a change made through one replica's admin API moves the
other's traffic within a few poll intervals (and it hot-loads the version first), and the operator's
pause / resume / promote / rollback verbs of the CLI act on both."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rollout_versions import copy_version

from models.catalog import load_catalog
from protos.adrank.v1 import ranking_pb2_grpc
from serving.client import build_request
from serving.process import ServerProcess
from serving.security.auth import hash_token

TOKEN = "replica-operator-token-0123456789"
AUTH = [("authorization", f"Bearer {TOKEN}")]
SPEC = """model = "vm"
version = 2
steps = [100]
interval_s = 600
"""


@pytest.fixture(scope="module")
def replicas(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("replicas")
    repo = d / "repo"
    shutil.copytree(tiny_run / "model_repository", repo)
    (d / "tokens").write_text(f"{hash_token(TOKEN)} admin,score operator\n")
    args = ["--repository", str(repo), "--rollout-registry", str(d / "state"), "--auth-tokens", str(d / "tokens"),
            "--rollout-poll-s", "0.2", "--rollout-unload-grace-s", "1"]
    with ServerProcess(args) as a, ServerProcess(args) as b:
        copy_version(repo, "vm", 1, 2)
        (d / "spec.toml").write_text(SPEC)
        yield {"a": a, "b": b, "dir": d, "catalog": load_catalog(tiny_run / "catalog.npz")}


def _cli(srv: ServerProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adrank", "rollout", *args, "--target", srv.target, "--actor", "ops"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "ADRANK_TOKEN": TOKEN})


def _served(srv: ServerProcess, catalog, users=range(30)) -> set[tuple[int, str]]:
    ts = int(catalog["max_ts_ms"][0])
    with srv.channel() as ch:
        stub = ranking_pb2_grpc.AdRankingStub(ch)
        out = set()
        for u in users:
            r = stub.Score(build_request(u, 10, catalog, seed=u, request_time_ms=ts), timeout=5, metadata=AUTH)
            out.add((r.served_by.model_version, r.served_by.arm))
        return out


def _until(srv, catalog, expected: set, timeout_s: float = 5.0) -> tuple[set, float]:
    t0 = time.monotonic()
    while True:
        seen = _served(srv, catalog)
        if seen == expected or time.monotonic() - t0 > timeout_s:
            return seen, time.monotonic() - t0


def test_a_change_through_one_replica_moves_the_other(replicas):
    a, b, catalog = replicas["a"], replicas["b"], replicas["catalog"]
    assert _served(b, catalog) == {(1, "live")}
    started = _cli(a, "start", str(replicas["dir"] / "spec.toml"))
    assert started.returncode == 0, started.stderr
    seen, waited = _until(b, catalog, {(2, "canary")})  # b loads v2 itself, then routes every user to it
    assert seen == {(2, "canary")} and waited < 5.0, (seen, waited)

    paused = _cli(b, "pause", "--model", "vm", "--reason", "look at it")
    # the analysis runs in a (the replica that started it): b has no rollout task to pause
    assert paused.returncode == 2 and "no rollout in progress" in paused.stderr
    paused = _cli(a, "pause", "--model", "vm", "--reason", "look at it")
    assert paused.returncode == 0 and "phase paused" in paused.stdout, paused.stderr
    resumed = _cli(a, "resume", "--model", "vm")
    assert resumed.returncode == 0 and "phase progressing" in resumed.stdout, resumed.stderr

    promoted = _cli(b, "promote", "--model", "vm", "--reason", "enough seen")
    assert promoted.returncode == 0 and "arms: live v2" in promoted.stdout, promoted.stderr
    seen, _ = _until(a, catalog, {(2, "live")})
    assert seen == {(2, "live")}
    status = _cli(a, "status", "--model", "vm")  # a's analysis learns its canary left through b
    assert "phase superseded" in status.stdout, status.stdout

    rolled = _cli(a, "rollback", "--model", "vm", "--reason", "back to v1")
    assert rolled.returncode == 0 and "arms: live v1" in rolled.stdout, rolled.stderr
    for srv in (a, b):
        seen, _ = _until(srv, catalog, {(1, "live")})
        assert seen == {(1, "live")}

    history = _cli(b, "history", "--model", "vm").stdout
    for text in ("staged → canary", "paused: look at it", "resumed", "canary → live", "enough seen",
                 "live → rolled_back", "retired → live"):
        assert text in history, (text, history)
