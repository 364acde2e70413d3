"""Stickiness through a real server: with a canary at 10 %, 10,000 users each call twice (two passes in
different orders, from four channels at once); every user gets one version and one arm on both calls, the
arm in the response names the version, the canary's share is within 4σ of its weight, and the server's
per-arm counter counts exactly the calls the clients saw on each arm. A rollback sends every one of them
back to live v1."""

from __future__ import annotations

import re
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import cache_fixtures
import grpc
import numpy as np
import pytest
from rollout_versions import copy_version

from models.catalog import load_catalog
from protos.adrank.v1 import ranking_pb2_grpc, rollout_pb2, rollout_pb2_grpc
from serving.client import build_request
from serving.process import ServerProcess
from serving.security.auth import hash_token

SCORE_TOKEN, ADMIN_TOKEN = "score-token-0123456789", "admin-token-9876543210"
N_USERS, WEIGHT, CHANNELS = 10_000, 10.0, 4
# an interval far longer than the test: the weight stays at the first step for both passes
SPEC = f"""model = "vm"
version = 2
steps = [{WEIGHT:g}, 50]
interval_s = 3600

[preflight]
max_embedding_age_s = 1e12
"""


def _auth(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def _arm_counts(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    pattern = r'^adrank_rollout_arm_requests_total\{(?=[^}]*model="vm")(?=[^}]*code="OK")[^}]*arm="(\w+)"[^}]*\} (\S+)'
    counts: dict[str, float] = {}
    for arm, value in re.findall(pattern, text, flags=re.M):
        counts[arm] = counts.get(arm, 0.0) + float(value)
    return counts


def _pass(srv: ServerProcess, request, users: np.ndarray) -> tuple[dict[int, tuple[int, str]], list[str]]:
    """Every user in `users` once, split over CHANNELS channels calling at once: (version, arm) per user."""
    seen: dict[int, tuple[int, str]] = {}
    failed: list[str] = []

    def run(part: np.ndarray) -> None:
        req = type(request)()
        req.CopyFrom(request)
        with srv.channel() as ch:
            stub = ranking_pb2_grpc.AdRankingStub(ch)
            for user in part.tolist():
                req.user_id = user
                try:
                    resp = stub.Score(req, timeout=10, metadata=_auth(SCORE_TOKEN))
                    seen[user] = (resp.served_by.model_version, resp.served_by.arm)
                except grpc.RpcError as exc:
                    failed.append(f"{exc.code().name}: {exc.details()}")

    threads = [threading.Thread(target=run, args=(part,)) for part in np.array_split(users, CHANNELS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return seen, failed


@pytest.mark.slow
def test_every_user_keeps_one_arm_over_ten_thousand_users(tiny_run: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_run / "model_repository", repo)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{hash_token(SCORE_TOKEN)} score ranker\n{hash_token(ADMIN_TOKEN)} admin,score operator\n")
    port = cache_fixtures.free_port()
    args = ["--repository", str(repo), "--rollout-registry", str(tmp_path / "state"), "--auth-tokens", str(tokens),
            "--rollout-poll-s", "0.2", "--metrics-port", str(port)]
    catalog = load_catalog(tiny_run / "catalog.npz")
    request = build_request(0, 1, catalog, seed=1, request_time_ms=int(catalog["max_ts_ms"][0]))
    users = np.arange(1, N_USERS + 1)
    with ServerProcess(args) as srv:
        copy_version(repo, "vm", 1, 2)
        with srv.channel() as ch:
            admin = rollout_pb2_grpc.RolloutAdminStub(ch)
            status = admin.Start(rollout_pb2.StartRolloutRequest(spec_toml=SPEC, actor="test"), timeout=60,
                                 metadata=_auth(ADMIN_TOKEN))
            assert (status.canary_version, status.canary_weight) == (2, WEIGHT), status
            time.sleep(1.0)  # every replica's routes follow the registry within a poll (0.2 s here)
            before = _arm_counts(port)
            first, failed_1 = _pass(srv, request, users)
            second, failed_2 = _pass(srv, request, np.random.default_rng(0).permutation(users))
            after = _arm_counts(port)
            admin.Rollback(rollout_pb2.RolloutTarget(model="vm", reason="test: back to live", actor="test"),
                           timeout=30, metadata=_auth(ADMIN_TOKEN))
            time.sleep(1.0)
            back, failed_3 = _pass(srv, request, users[:2_000])

    assert failed_1 == failed_2 == failed_3 == [], (failed_1 + failed_2 + failed_3)[:5]
    assert len(first) == len(second) == N_USERS
    moved = [u for u in first if first[u] != second[u]]
    assert moved == [], f"{len(moved)} users changed arm, e.g. {[(u, first[u], second[u]) for u in moved[:3]]}"
    assert set(first.values()) == {(1, "live"), (2, "canary")}, set(first.values())
    share = sum(arm == "canary" for _, arm in first.values()) / N_USERS
    p = WEIGHT / 100
    bound = 4 * np.sqrt(p * (1 - p) / N_USERS)
    print(f"\n{N_USERS:,} users × 2 calls: canary share {share:.4f} (weight {p:.2f} ± {bound:.4f}), 0 moved")
    assert abs(share - p) <= bound, (share, p, bound)
    # the server counted every call on the arm the client saw, and nothing else
    seen = {"live": 0, "canary": 0}
    for d in (first, second):
        for _, arm in d.values():
            seen[arm] += 1
    delta = {arm: after.get(arm, 0.0) - before.get(arm, 0.0) for arm in set(after) | set(before)}
    assert {arm: n for arm, n in delta.items() if n} == {arm: float(n) for arm, n in seen.items()}, (delta, seen)
    assert set(back.values()) == {(1, "live")}
