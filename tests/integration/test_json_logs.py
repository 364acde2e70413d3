"""JSON logs of the real `adrank serve` process: every line one JSON object; each Score outcome an
access record with request_id, model, version, code and latency; a flood of undecodable requests
rate-limited per code; tokens (valid, invalid, lacking the scope) never in the log."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import grpc
import pytest

from models.catalog import load_catalog
from protos.adrank.v1 import ranking_pb2_grpc
from serving.client import build_request, to_columns
from serving.process import ServerProcess
from serving.security.auth import hash_token

SCORE_TOKEN, ADMIN_TOKEN, WRONG_TOKEN = "score-secret-4f1c9a", "admin-secret-77d0e2", "wrong-secret-0b3e55"
FAILURES_PER_S = 5


def test_json_log_records_every_outcome_rate_limits_floods_and_hides_tokens(tiny_run: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{hash_token(SCORE_TOKEN)} score ranker\n{hash_token(ADMIN_TOKEN)} admin operator\n")
    catalog = load_catalog(tiny_run / "catalog.npz")
    env = {"ADRANK_LOG_FORMAT": "json", "ADRANK_ACCESS_LOG_SAMPLE": "1",
           "ADRANK_ACCESS_LOG_FAILURES_PER_S": str(FAILURES_PER_S)}
    args = ["--repository", str(tiny_run / "model_repository"), "--auth-tokens", str(tokens)]
    sent: Counter = Counter()
    with ServerProcess(args, env=env) as srv, grpc.insecure_channel(srv.target) as ch:
        stub = ranking_pb2_grpc.AdRankingStub(ch)
        raw = ch.unary_unary("/adrank.v1.AdRanking/Score")
        good = [("authorization", f"Bearer {SCORE_TOKEN}")]
        for i in range(20):
            req = build_request(int(catalog["user_id"][i]), 10, catalog, seed=i,
                                request_time_ms=int(catalog["max_ts_ms"][0]))
            req.request_id = f"req-{i}"
            stub.Score(req, metadata=good, timeout=5)
            sent["OK"] += 1
        columns = to_columns(req)
        columns.request_id = "req-columns"
        stub.ScoreColumns(columns, metadata=good, timeout=5)  # the columnar RPC is logged the same way
        sent["OK"] += 1
        t0 = time.monotonic()
        for _ in range(200):  # undecodable bytes, as fast as they go
            with pytest.raises(grpc.RpcError) as info:
                raw(b"\xff\x01garbage", metadata=good, timeout=5)
            sent[info.value.code().name] += 1
        flood_s = time.monotonic() - t0
        for metadata in ([("authorization", f"Bearer {WRONG_TOKEN}")], [("authorization", f"Bearer {ADMIN_TOKEN}")],
                         []):
            with pytest.raises(grpc.RpcError) as info:
                stub.Score(req, metadata=metadata, timeout=5)
            sent[info.value.code().name] += 1
        time.sleep(0.3)
        text = srv.log_text()
    lines = [line for line in text.splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    access = [r for r in records if r.get("event") == "score"]
    by_code = Counter(r["code"] for r in access)
    bad = [r for r in access if r["code"] == "INVALID_ARGUMENT"]
    print(f"\nJSON log: {len(lines)} lines, access records {dict(by_code)}; sent {dict(sent)}; flood of 200 in "
          f"{flood_s:.2f} s, suppressed reported {sum(r.get('suppressed', 0) for r in bad)}")
    assert sent == {"OK": 21, "INVALID_ARGUMENT": 200, "UNAUTHENTICATED": 2, "PERMISSION_DENIED": 1}
    ok = [r for r in access if r["code"] == "OK"]
    assert [r["request_id"] for r in ok] == [f"req-{i}" for i in range(20)] + ["req-columns"]
    assert all(r["model"] == "vm" and isinstance(r["version"], int) and r["latency_ms"] > 0
               and r["backend"] == "embedded" and r["candidates"] == 10 for r in ok)
    assert 1 <= len(bad) <= FAILURES_PER_S * (int(flood_s) + 2)  # logged, but not once per request
    assert all(r["level"] == "WARNING" and r["detail"] for r in bad)
    refusals = [r for r in records if r["logger"] == "serving.security.auth"]
    assert refusals and all("refused /adrank.v1.AdRanking/Score" in r["msg"] for r in refusals)
    assert all(t not in text for t in (SCORE_TOKEN, ADMIN_TOKEN, WRONG_TOKEN))
