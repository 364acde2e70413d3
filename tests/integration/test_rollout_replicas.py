"""Two replicas sharing one registry file: a change made through one replica's admin API moves the
other's traffic within a few poll intervals (and it hot-loads the version first), and the operator's
pause / resume / promote / rollback verbs of the CLI act on both."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


def _phase(srv, expected: str, timeout_s: float = 5.0) -> str:
    """The rollout phase `srv` reports, polled until it is `expected` or `timeout_s` passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        out = _cli(srv, "status", "--model", "vm", "--json")
        phase = json.loads(out.stdout).get("phase", "") if out.returncode == 0 else out.stderr
        if phase == expected or time.monotonic() > deadline:
            return phase
        time.sleep(0.2)


def _until(srv, catalog, expected: set, timeout_s: float = 5.0) -> tuple[set, float]:
    t0 = time.monotonic()
    while True:
        seen = _served(srv, catalog)
        if seen == expected or time.monotonic() - t0 > timeout_s:
            return seen, time.monotonic() - t0


class _Veto(BaseHTTPRequestHandler):
    """A pre-rollout webhook that refuses, as a load-test gate would."""

    calls: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Veto.calls.append(json.loads(body))
        self.send_response(403)
        self.end_headers()
        self.wfile.write(b"error budget spent")

    def log_message(self, *args) -> None:
        pass


def test_a_pre_rollout_webhook_veto_moves_no_traffic(replicas):
    hook = ThreadingHTTPServer(("127.0.0.1", 0), _Veto)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    try:
        spec = replicas["dir"] / "vetoed.toml"
        spec.write_text(SPEC + f"""
[[webhooks]]
name = "gate"
phase = "pre-rollout"
url = "http://127.0.0.1:{hook.server_address[1]}/gate"
timeout_s = 5
""")
        refused = _cli(replicas["a"], "start", str(spec))
    finally:
        hook.shutdown()
    assert refused.returncode == 2 and "FAILED_PRECONDITION" in refused.stderr and "gate" in refused.stderr
    assert _Veto.calls and _Veto.calls[0]["phase"] == "pre-rollout"
    status = _cli(replicas["a"], "status", "--model", "vm")
    assert "arms: live v1\n" in status.stdout + "\n" and "v2    staged" in status.stdout, status.stdout
    assert _served(replicas["b"], replicas["catalog"]) == {(1, "live")}


def test_a_change_through_one_replica_moves_the_other(replicas):
    a, b, catalog = replicas["a"], replicas["b"], replicas["catalog"]
    assert _served(b, catalog) == {(1, "live")}
    started = _cli(a, "start", str(replicas["dir"] / "spec.toml"))
    assert started.returncode == 0, started.stderr
    seen, waited = _until(b, catalog, {(2, "canary")})  # b loads v2 itself, then routes every user to it
    assert seen == {(2, "canary")} and waited < 5.0, (seen, waited)

    # the analysis runs in a (the replica that started it); b records the pause and a applies it
    paused = _cli(b, "pause", "--model", "vm", "--reason", "look at it")
    assert paused.returncode == 0 and "paused: analysis holds" in paused.stdout, paused.stderr
    assert _phase(a, "paused") == "paused"  # within a poll (0.2 s) of a
    resumed = _cli(b, "resume", "--model", "vm", "--reason", "seen it")
    assert resumed.returncode == 0, resumed.stderr
    assert _phase(a, "progressing") == "progressing"
    paused = _cli(a, "pause", "--model", "vm", "--reason", "look again")  # the leader applies its own at once
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
    for text in ("staged → canary", "paused: look at it (recorded through", "resumed: seen it", "paused: look again",
                 "canary → live", "enough seen",
                 "live → rolled_back", "retired → live"):
        assert text in history, (text, history)
