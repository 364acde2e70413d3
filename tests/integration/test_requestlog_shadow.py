"""Shadow pairs in the request log, through a real `adrank serve` with a rollout registry and a request log.

v2 (v1's graph with p_ctr × 3, exported while the server runs) shadows live v1 at 50 % of requests.
After traffic, the server is stopped (which publishes the log) and the Parquet files are read back:
every mirrored request's row holds the shadow's version and scores next to the live ones, every other
row holds none, and the logged shadow scores are bit for bit what v2 scores offline for the same
candidates (the replay stages, pinned to v2).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from rollout_versions import copy_version

from models.catalog import load_catalog
from models.data.requestlog import read_request_log
from protos.adrank.v1 import ranking_pb2_grpc, rollout_pb2, rollout_pb2_grpc
from serving.backends.embedded import EmbeddedBackend
from serving.client import build_request
from serving.config import ServerConfig
from serving.process import ServerProcess
from serving.replay import Replayer, logged_requests
from serving.security.auth import hash_token

SCORE_TOKEN, ADMIN_TOKEN = "score-token-0123456789", "admin-token-9876543210"
N_REQUESTS = 300


def _auth(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


async def _offline_scores(repo: Path, rows: list[dict], version: int) -> list[tuple[np.ndarray, np.ndarray]]:
    config = ServerConfig.from_env(model_repository=str(repo))
    backend = EmbeddedBackend(config.model_repository, intra_op_threads=1)
    await backend.start()
    try:
        replayer = Replayer(config, backend, now_ms=int(time.time() * 1000))
        out = []
        for row in rows:
            ranking, _ = await replayer.score({**row, "model_version": version})
            out.append((ranking.all_p_ctr, ranking.all_p_cvr))
        return out
    finally:
        await backend.close()


def _serve_with_shadow(repo: Path, model: str, catalog_path: Path, tmp_path: Path,
                       extra_args: list[str]) -> Path:
    """Serves `model` v1 live with v2 (v1's graph, p_ctr × 3, exported while the server runs) shadowing at
    50 %, sends warm-up traffic until mirrors are scored and then N_REQUESTS measured ones (ids "s-*"),
    stops the server (which publishes the log) and returns the log folder."""
    log_dir = tmp_path / "requestlog"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{hash_token(SCORE_TOKEN)} score ranker\n{hash_token(ADMIN_TOKEN)} admin,score operator\n")
    catalog = load_catalog(catalog_path)
    ts = int(catalog["max_ts_ms"][0])
    args = ["--repository", str(repo), "--rollout-registry", str(tmp_path / "state"), "--auth-tokens", str(tokens),
            "--rollout-poll-s", "0.2", "--request-log", str(log_dir), "--drain-delay-s", "0", *extra_args]
    with ServerProcess(args) as srv:
        copy_version(repo, model, 1, 2, p_ctr_factor=3.0)
        started = subprocess.run([sys.executable, "-m", "adrank", "rollout", "shadow", "--model", model, "--version",
                                  "2", "--sample-rate", "0.5", "--target", srv.target], capture_output=True,
                                 text=True, timeout=60, env={**os.environ, "ADRANK_TOKEN": ADMIN_TOKEN})
        assert started.returncode == 0, started.stderr
        with srv.channel() as ch:
            stub, admin = ranking_pb2_grpc.AdRankingStub(ch), rollout_pb2_grpc.RolloutAdminStub(ch)
            deadline, i = time.monotonic() + 60, 0
            while True:  # warm-up until v2 is loaded and scoring mirrors
                stub.Score(build_request(i % 50, 20, catalog, seed=i, request_time_ms=ts, request_id=f"w-{i}",
                                         model=model), timeout=10, metadata=_auth(SCORE_TOKEN))
                i += 1
                s = admin.Status(rollout_pb2.RolloutTarget(model=model), timeout=5, metadata=_auth(ADMIN_TOKEN))
                if s.shadow.pairs > 0:
                    break
                assert time.monotonic() < deadline, "the shadow never scored a mirror"
            for k in range(N_REQUESTS):
                resp = stub.Score(build_request(k % 97, 20, catalog, seed=1000 + k, request_time_ms=ts,
                                                request_id=f"s-{k}", model=model),
                                  timeout=10, metadata=_auth(SCORE_TOKEN))
                assert (resp.served_by.model_version, resp.served_by.arm) == (1, "live")
    return log_dir


def test_a_loopfm_shadow_logs_the_snapshot_its_history_came_from(loopfm_run: dict, tmp_path: Path) -> None:
    """With FM history read from a real cache, a mirrored request's row names the snapshot the shadow's
    tensors were built from: live's (v2 reuses live's tensors), and not empty."""
    repo = tmp_path / "repo"
    shutil.copytree(loopfm_run["repo"], repo)
    shutil.rmtree(repo / "vm_loopfm" / "2")  # the fixture's v2 names an fm_version the cache lacks
    log_dir = _serve_with_shadow(repo, "vm_loopfm", loopfm_run["dir"] / "catalog.npz", tmp_path,
                                 ["--cache-dir", str(loopfm_run["cache"])])
    table = read_request_log(log_dir)
    rows = [i for i, rid in enumerate(table.column("request_id").to_pylist()) if rid.startswith("s-")]
    version = table.column("shadow_model_version").to_pylist()
    shadow_snapshot, live_snapshot = (table.column(c).to_pylist() for c in ("shadow_snapshot_id", "snapshot_id"))
    mirrored = [j for j in rows if version[j] == 2]
    assert len(rows) == N_REQUESTS and 0.3 * N_REQUESTS <= len(mirrored) <= 0.7 * N_REQUESTS
    assert all(live_snapshot[j] for j in rows)  # every live row read the cache's snapshot
    for j in rows:
        if j in mirrored:
            assert shadow_snapshot[j] == live_snapshot[j] != ""
        else:
            assert shadow_snapshot[j] == ""


def test_a_shadowed_request_is_logged_with_both_score_vectors(tiny_run: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_run / "model_repository", repo)
    log_dir = _serve_with_shadow(repo, "vm", tiny_run / "catalog.npz", tmp_path, [])
    table = read_request_log(log_dir)  # the server published every record on stop
    measured = [r for r in logged_requests(table) if r["request_id"].startswith("s-")]
    assert len(measured) == N_REQUESTS
    shadow_version = table.column("shadow_model_version").to_pylist()
    p_ctr_shadow = table.column("p_ctr_shadow").to_pylist()
    p_cvr_shadow = table.column("p_cvr_shadow").to_pylist()
    shadow_snapshot = table.column("shadow_snapshot_id").to_pylist()
    live_snapshot = table.column("snapshot_id").to_pylist()
    by_id = {rid: i for i, rid in enumerate(table.column("request_id").to_pylist())}
    mirrored = [r for r in measured if shadow_version[by_id[r["request_id"]]] == 2]
    for r in measured:
        j = by_id[r["request_id"]]
        assert r["model_version"] == 1
        if shadow_version[j] == 0:
            assert p_ctr_shadow[j] == [] and p_cvr_shadow[j] == [] and shadow_snapshot[j] == ""
        else:
            assert shadow_version[j] == 2 and len(p_ctr_shadow[j]) == len(p_cvr_shadow[j]) == len(r["ad_id"])
            # v2 is a copy of v1's graph on the same features: it reused live's tensors, so live's snapshot
            assert shadow_snapshot[j] == live_snapshot[j]
    print(f"{len(mirrored)} of {N_REQUESTS} logged requests carry shadow v2 scores")
    assert 0.3 * N_REQUESTS <= len(mirrored) <= 0.7 * N_REQUESTS  # a 50 % sample by request id
    offline = asyncio.run(_offline_scores(repo, mirrored, 2))
    for r, (p_ctr, p_cvr) in zip(mirrored, offline, strict=True):
        j = by_id[r["request_id"]]
        np.testing.assert_array_equal(np.array(p_ctr_shadow[j], np.float32), p_ctr)
        np.testing.assert_array_equal(np.array(p_cvr_shadow[j], np.float32), p_cvr)
        assert not np.array_equal(p_ctr, r["p_ctr"])  # the shadow's own scores, not live's copied
    live_again = asyncio.run(_offline_scores(repo, mirrored[:20], 1))
    for r, (p_ctr, _) in zip(mirrored, live_again, strict=False):
        np.testing.assert_array_equal(r["p_ctr"], p_ctr)

