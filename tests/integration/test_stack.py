"""`adrank up` / `adrank down` end to end: real redis-server (and a real 3-node Redis Cluster), real replicas, real
haproxy, locust in its own process through the balancer, and no process left behind."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from stack.procs import alive
from stack.state import StackState

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not (shutil.which("redis-server") and shutil.which("redis-cli")
                                     and shutil.which("haproxy")),
                                reason="needs redis-server, redis-cli and haproxy (apt-get install redis-server "
                                       "haproxy; .ci/run installs them)")


def _adrank(*args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adrank", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _ok_count(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return sum(float(v) for v in re.findall(r'^adrank_score_requests_total\{code="OK"[^}]*\} (\S+)$', text, re.M))


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _assert_down(run_dir: Path, state: StackState) -> None:
    proc = _adrank("down", "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"({len(state.processes)} processes were running)" in proc.stdout
    left = [p.name for p in state.processes if alive(p)]
    assert left == [], f"still running after adrank down: {left}"
    assert not any(_listening(p.port) for p in state.processes)
    assert not (run_dir / "stack.json").exists() and not (run_dir / "redis.password").exists()
    again = _adrank("down", "--run-dir", str(run_dir))  # idempotent
    assert again.returncode == 0 and "no stack recorded" in again.stdout


def _up(run_dir: Path, *args: str) -> tuple[subprocess.CompletedProcess, StackState | None]:
    proc = _adrank("up", "--run-dir", str(run_dir), "--port", "0", *args)
    path = run_dir / "stack.json"
    return proc, StackState.from_json(path.read_text()) if path.exists() else None


def test_two_replicas_behind_haproxy_share_a_locust_run_and_down_leaves_nothing(tiny_run: Path,
                                                                                tmp_path: Path) -> None:
    run_dir = tmp_path / "stack"
    proc, state = _up(run_dir, "--replicas", "2", "--repository", str(tiny_run / "model_repository"))
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert state is not None and state.complete
        assert [p.role for p in state.processes] == ["redis", "replica", "replica", "balancer"]
        assert all(alive(p) for p in state.processes)
        password = (run_dir / "redis.password").read_text().strip()
        assert stat.S_IMODE(os.stat(run_dir / "redis.password").st_mode) == 0o600
        # the secret is in no output, no log, no state file and no command line
        assert password not in proc.stdout + proc.stderr + (run_dir / "stack.json").read_text()
        assert not [f for f in (run_dir / "logs").iterdir() if password in f.read_text(errors="replace")]
        assert not [p.name for p in state.processes if password.encode() in Path(f"/proc/{p.pid}/cmdline").read_bytes()]

        refused = _adrank("up", "--run-dir", str(run_dir), "--port", "0")
        assert refused.returncode == 2 and "already up" in refused.stderr, refused.stdout + refused.stderr

        budget = tmp_path / "loose.toml"
        budget.write_text("[budget]\np99_ms = 5000\nmax_error_rate = 0.0\nmin_rps = 1\n")
        replicas = state.of_role("replica")
        before = [_ok_count(r.metrics_port) for r in replicas]
        load = _adrank("loadtest", "--", "--target", state.target, "--users", "4", "--spawn-rate", "4",
                       "--duration", "6", "--warmup", "0", "--budget", str(budget), "--catalog",
                       str(tiny_run / "catalog.npz"), "--out", str(tmp_path / "lt"), "--candidates", "fixed:50",
                       timeout=90)
        assert load.returncode == 0, load.stdout[-3000:] + load.stderr[-3000:]
        summary = json.loads((tmp_path / "lt" / "summary.json").read_text())["summary"]
        counts = [_ok_count(r.metrics_port) - b for r, b in zip(replicas, before, strict=True)]
        print(f"locust {summary['requests']} requests; OK per replica {counts}")
        assert summary["failures"] == 0 and summary["requests"] > 0
        assert sum(counts) >= summary["requests"]  # every counted call reached a replica and was OK
        assert min(counts) >= 0.3 * sum(counts), counts  # round robin: both replicas carry the load
    finally:
        if state is not None:
            _assert_down(run_dir, state)


def test_cluster_stack_serves_history_copied_from_the_embedded_cache(loopfm_run: dict, tmp_path: Path) -> None:
    """--redis cluster: the embedded cache is copied into a 3-primary cluster and a LoopFM model reads a user's
    history from it through the balancer (no FLAG_USER_HISTORY_MISSING); a cold user still gets the flag."""
    run_dir = tmp_path / "stack"
    repo, cache = Path(loopfm_run["repo"]), Path(loopfm_run["cache"])
    proc, state = _up(run_dir, "--replicas", "1", "--redis", "cluster", "--repository", str(repo),
                      "--cache-dir", str(cache), "--model", "vm_loopfm")
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert state is not None and len(state.of_role("redis")) == 3
        assert "copied" in proc.stdout and "fm-test01" in proc.stdout
        catalog = Path(loopfm_run["dir"]) / "catalog.npz"
        import numpy as np

        with np.load(catalog) as npz:
            users, t_ms = npz["user_id"], int(npz["max_ts_ms"][0]) + 1
        flags = {}
        for user in (int(users[0]), int(users.max()) + 1_000_000):
            score = _adrank("score", "--target", state.target, "--user", str(user), "--catalog", str(catalog),
                            "--model", "vm_loopfm", "--version", "1", "--time-ms", str(t_ms), "--json", timeout=60)
            assert score.returncode == 0, score.stdout + score.stderr
            flags[user] = json.loads(score.stdout).get("flags", [])
        warm, cold = flags.values()
        assert "FLAG_USER_HISTORY_MISSING" not in warm and "FLAG_USER_HISTORY_MISSING" in cold, flags
    finally:
        if state is not None:
            _assert_down(run_dir, state)


def _group_members(pgid: int) -> list[int]:
    """Live pids whose process group is `pgid` (Triton's python stubs share the server's group)."""
    out = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            out.append(int(stat_file.parent.name))
    return out


@pytest.mark.skipif(importlib.util.find_spec("pytriton") is None, reason="nvidia-pytriton (the 'triton' extra) missing")
def test_triton_stack_scores_on_triton_and_down_stops_its_stubs(tiny_run: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "stack"
    proc, state = _up(run_dir, "--replicas", "1", "--redis", "none", "--triton", "--model", "vm",
                      "--repository", str(tiny_run / "model_repository"))
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert state is not None and [p.role for p in state.processes] == ["triton", "replica", "balancer"]
        triton = state.of_role("triton")[0]
        stubs = _group_members(triton.pid)
        assert len(stubs) >= 2  # the server and at least one python backend stub
        score = _adrank("score", "--target", state.target, "--user", "1", "--catalog", str(tiny_run / "catalog.npz"),
                        "--model", "vm", timeout=60)
        assert score.returncode == 0 and "(triton," in score.stdout, score.stdout + score.stderr
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{triton.metrics_port}/metrics", timeout=5).read().decode()
        assert re.search(r'^nv_inference_request_success\{model="vm",version="1"\} [1-9]', metrics, re.M), metrics
    finally:
        if state is not None:
            _assert_down(run_dir, state)
    assert [pid for pid in stubs if pid in _group_members(triton.pid)] == []


def test_redis_memory_bench_orders_codecs_and_counts_the_whole_value(tmp_path: Path) -> None:
    """`python -m stack.bench redis-memory` (docs/scaling.md) on a real redis-server and a real 3-primary cluster:
    smaller codecs cost less, and no codec costs less than its packed value (L × (code + ts + event id))."""
    out = tmp_path / "mem.json"
    proc = subprocess.run([sys.executable, "-m", "stack.bench", "redis-memory", "--users", "300", "--codecs",
                           "float32,float16,int8,int4", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    code_bytes = {"float32": 128, "float16": 64, "int8": 36, "int4": 16}  # dim 32 (+ int8's scale); pq trains faiss
    for topology in ("single", "cluster"):
        got = {r["codec"]: r["bytes_per_user"] for r in rows if r["topology"] == topology}
        assert list(got) == list(code_bytes)
        assert got["float32"] > got["float16"] > got["int8"] > got["int4"], got
        for codec, b in code_bytes.items():
            assert got[codec] >= 64 * (b + 16), (topology, codec, got[codec])
    shares = [r["node_share"] for r in rows if r["topology"] == "cluster"]
    assert all(len(s) == 3 and min(s) > 0.2 for s in shares), shares


def _live_with(text: str) -> list[str]:
    """Command lines of live processes mentioning `text` (a test's tmp path)."""
    out = []
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state not in ("Z", "X"):
            out.append(cmdline)
    return out


def test_a_failed_up_names_the_part_and_stops_what_it_started(tmp_path: Path) -> None:
    """Replicas on a repository without a loadable model exit: `adrank up` fails naming the replica and its log,
    after stopping the Redis it had already started; no state is left, so the next `up` is not refused."""
    empty = tmp_path / "repo"
    empty.mkdir()
    run_dir = tmp_path / "stack"
    proc, _ = _up(run_dir, "--replicas", "2", "--repository", str(empty))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert re.search(r"error: replica-\d \(pid \d+\) exited during start-up; log .*replica-\d\.log", proc.stderr)
    assert "no loadable model" in proc.stderr
    assert "redis (single)" in proc.stdout  # Redis had been started before the replicas failed
    assert not (run_dir / "stack.json").exists() and not (run_dir / "redis.password").exists()
    assert _live_with(str(tmp_path)) == []
