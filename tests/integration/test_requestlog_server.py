"""The request log wired into a real server: `adrank serve --request-log DIR` records every scored
request (ids, versions, snapshot, scores equal to the responses), its counters and the embedding cache's
hit-rate series reach /metrics, and `adrank replay` re-scores the logged requests bit for bit."""

from __future__ import annotations

import json
import re
import socket
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from embedding_cache import open_reader
from models.catalog import load_catalog
from models.data.requestlog import read_request_log
from protos.adrank.v1 import ranking_pb2, ranking_pb2_grpc
from serving.client import build_request
from serving.pipeline import STAGE_NAMES
from serving.process import ServerProcess

N_REQUESTS = 10_200  # ≥ 10,000 logged requests replayed (issue acceptance)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metric(text: str, name: str) -> float:
    """The sum of every sample of `name` (all label sets) in a /metrics page."""
    values = [float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE)]
    assert values, f"{name} not on /metrics"
    return sum(values)


@pytest.fixture(scope="module")
def served(loopfm_run, tmp_path_factory):
    """N requests against a logging LoopFM server: users with and without history, ids sent and
    generated, request times sent and defaulted. Returns the requests, responses, /metrics and the log."""
    log_dir = tmp_path_factory.mktemp("served") / "requestlog"
    metrics_port = _free_port()
    catalog = load_catalog(loopfm_run["dir"] / "catalog.npz")
    events = loopfm_run["events"]
    rng = np.random.default_rng(3)
    t_end = int(events["ts_ms"][-1])
    requests = []
    for i in range(N_REQUESTS):
        user = int(rng.choice(events["user_id"])) if i % 10 else 10**9 + i  # every 10th: unknown, degraded
        t = None if i % 50 == 7 else t_end - int(rng.integers(0, 30 * 86_400_000))
        requests.append(build_request(user, int(rng.integers(5, 60)), catalog, rng=rng, request_time_ms=t,
                                      request_id=f"req-{i}" if i % 3 else ""))
    args = ["--repository", str(loopfm_run["repo"]), "--model", "vm_loopfm", "--cache-dir", str(loopfm_run["cache"]),
            "--request-log", str(log_dir), "--metrics-port", str(metrics_port)]
    with ServerProcess(args) as srv, grpc.insecure_channel(srv.target) as ch:
        stub = ranking_pb2_grpc.AdRankingStub(ch)
        responses = [stub.Score(r, timeout=10) for r in requests]
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    # leaving the block sends SIGTERM: the server drains and closes the sink, which publishes the open file
    return {"requests": requests, "responses": responses, "metrics": metrics, "log": log_dir}


def test_every_scored_request_is_logged_with_its_ids_versions_snapshot_and_scores(served, loopfm_run):
    table = read_request_log(served["log"])
    assert table.num_rows == N_REQUESTS
    rows = {r["request_id"]: r for r in table.to_pylist()}
    snapshot = open_reader("embedded", loopfm_run["cache"], "fm-test01").snapshot_id
    generated = 0
    for req, resp in zip(served["requests"], served["responses"], strict=True):
        if not req.request_id:
            generated += 1
        row = rows[resp.request_id]  # generated ids are logged as the response carries them
        assert (row["model_name"], row["model_version"], row["fm_version"]) == ("vm_loopfm", 1, "fm-test01")
        assert row["snapshot_id"] == snapshot and row["rollout_arm"] == "live" and row["backend"] == "embedded"
        assert row["user_id"] == req.user_id and row["ad_id"] == [c.ad_id for c in req.candidates]
        assert row["request_time_ms"] == resp.request_time_ms
        assert row["flags"] == [ranking_pb2.Flag.Name(f) for f in resp.flags]
        assert row["order"] == [c.request_index for c in resp.candidates]
        p_ctr, p_cvr = np.array(row["p_ctr"], np.float32), np.array(row["p_cvr"], np.float32)
        ev = np.array(row["expected_value"])
        assert not np.isnan(p_ctr).any()  # every candidate's score, not only the returned ones
        for c in resp.candidates:
            i = c.request_index
            assert (p_ctr[i], p_cvr[i], ev[i]) == (np.float32(c.p_ctr), np.float32(c.p_cvr), c.expected_value)
        assert set(dict(row["stage_us"])) == set(STAGE_NAMES)
    assert generated == N_REQUESTS // 3 and len(rows) == N_REQUESTS


def test_sink_and_cache_series_on_metrics_match_the_log(served):
    text, table = served["metrics"], read_request_log(served["log"])
    # scraped while serving: every offered record counted, none dropped (some may still be queued)
    assert _metric(text, "adrank_requestlog_records_dropped_total") == 0
    missing = sum("FLAG_USER_HISTORY_MISSING" in f for f in table.column("flags").to_pylist())
    assert _metric(text, "adrank_cache_user_lookups_total") == N_REQUESTS
    assert _metric(text, "adrank_cache_user_hits_total") == N_REQUESTS - missing
    assert _metric(text, "adrank_cache_fallbacks_total") == missing
    assert "adrank_cache_snapshot_age" in text


def test_replay_of_the_logged_requests_is_bit_identical(served, loopfm_run, tmp_path: Path):
    from adrank.cli import main

    report_path = tmp_path / "replay.json"
    rc = main(["replay", "--request-log", str(served["log"]), "--repository", str(loopfm_run["repo"]),
               "--cache-dir", str(loopfm_run["cache"]), "--json", str(report_path)])
    report = json.loads(report_path.read_text())
    print(report)
    assert rc == 0
    assert report["requests"] == N_REQUESTS >= 10_000
    assert report["identical"] == N_REQUESTS and report["max_abs_diff"] == 0.0
    assert report["failed"] == 0 and report["flag_mismatches"] == 0


def test_replay_reports_a_served_score_that_does_not_come_back(served, loopfm_run, tmp_path: Path):
    """One logged p_ctr moved by one float32 step: replay counts that request as differing, and the
    largest difference is that step (so the 100% above is a comparison, not a tautology)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from serving.replay import replay

    table = read_request_log(served["log"]).slice(0, 50)
    p_ctr = table.column("p_ctr").to_pylist()
    before = np.float32(p_ctr[7][0])
    moved = np.nextafter(before, np.float32(1))
    p_ctr[7][0] = float(moved)
    altered = table.set_column(table.schema.get_field_index("p_ctr"), table.schema.field("p_ctr"),
                               pa.array(p_ctr, type=table.schema.field("p_ctr").type))
    folder = tmp_path / "altered"
    folder.mkdir()
    pq.write_table(altered.replace_schema_metadata(table.schema.metadata), folder / "requests-x.parquet")
    report = replay(folder, loopfm_run["repo"], loopfm_run["cache"])
    assert (report.requests, report.identical, report.differing) == (50, 49, 1)
    assert report.first_differing == [table.column("request_id")[7].as_py()]
    assert report.max_abs_diff == float(moved) - float(before)
