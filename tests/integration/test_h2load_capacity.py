"""The h2load capacity run of `adrank bench fastpath` against a real server: h2load reports HTTP status
only, so the run must catch gRPC errors from the server's own counters."""

from __future__ import annotations

import shutil
import socket
import struct
from pathlib import Path

import pytest

from loadtests.bench_fastpath import _hist_quantile, h2load_run
from models.catalog import load_catalog
from serving.client import build_request, to_columns
from serving.process import ServerProcess

pytestmark = pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load not installed (nghttp2-client)")


def _frame(path: Path, body: bytes) -> Path:
    path.write_bytes(b"\0" + struct.pack(">I", len(body)) + body)
    return path


def test_h2load_run_counts_ok_responses_and_catches_grpc_errors(tiny_run: Path, tmp_path: Path):
    catalog = load_catalog(tiny_run / "catalog.npz")
    req = build_request(int(catalog["user_id"][1]), 200, catalog, seed=2, request_time_ms=int(catalog["max_ts_ms"][0]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        metrics_port = s.getsockname()[1]
    args = ["--repository", str(tiny_run / "model_repository"), "--metrics-port", str(metrics_port)]
    with ServerProcess(args) as srv:
        body = _frame(tmp_path / "good.grpc", to_columns(req).SerializeToString())
        good = h2load_run(srv.target, metrics_port, body, "/adrank.v1.AdRanking/ScoreColumns", 2, 2, 2,
                          tmp_path / "h2.log", server_pid=srv.proc.pid)
        assert good["done"] > 0 and good["all_grpc_ok"] and good["server_ok"] >= good["done"]
        # the server's threads did the work (one process, its event loop the busiest thread); h2load ran too
        cpu = good["server_cpu"]
        assert len(cpu["per_process"]) == 1 and cpu["per_process"][0]["threads"] > 1
        assert 0 < cpu["per_process"][0]["busiest_cores"] <= cpu["cores"] and good["h2load_cores"] > 0
        assert good["server_not_ok"] == {} and good["client_p99_ms"] >= good["client_p50_ms"] > 0
        # an empty request is a valid HTTP/2 exchange h2load calls a success, and INVALID_ARGUMENT to the server
        bad = h2load_run(srv.target, metrics_port, _frame(tmp_path / "bad.grpc", b""),
                         "/adrank.v1.AdRanking/ScoreColumns", 1.0, 1, 1, tmp_path / "h2.log")
        assert bad["succeeded"] == bad["done"] > 0  # h2load itself sees nothing wrong
        assert not bad["all_grpc_ok"] and bad["server_not_ok"].get("INVALID_ARGUMENT", 0) >= bad["done"]


def test_histogram_quantile_is_the_upper_bound_of_the_bucket_between_scrapes():
    before = {0.001: 10.0, 0.005: 10.0, 0.01: 10.0, float("inf"): 10.0}
    after = {0.001: 60.0, 0.005: 108.0, 0.01: 110.0, float("inf"): 110.0}  # 100 new calls: 50, 48, 2
    assert _hist_quantile(before, after, 0.5) == 1.0
    assert _hist_quantile(before, after, 0.99) == 10.0
    assert _hist_quantile(before, after, 0.98) == 5.0
