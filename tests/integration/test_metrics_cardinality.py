"""Request content cannot grow the server's memory or /metrics: 20,000 requests naming 20,000 distinct
model names leave /metrics the same size and RSS flat (labels come from loaded models, never the request)."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import cache_fixtures
import grpc
import pytest

from models.catalog import load_catalog
from protos.adrank.v1 import ranking_pb2_grpc
from serving.client import build_request
from serving.process import ServerProcess

N_NAMES = 20_000


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS line")


def _metrics_bytes(port: int) -> int:
    return len(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read())


@pytest.mark.slow
def test_distinct_model_names_leave_metrics_and_rss_flat(tiny_run):
    port = cache_fixtures.free_port()
    catalog = load_catalog(tiny_run / "catalog.npz")
    req = build_request(int(catalog["user_id"][3]), 20, catalog, seed=1, request_time_ms=int(catalog["max_ts_ms"][0]))
    args = ["--repository", str(tiny_run / "model_repository"), "--metrics-port", str(port)]
    codes: dict[str, int] = {}
    with ServerProcess(args) as srv, grpc.insecure_channel(srv.target) as ch:
        stub = ranking_pb2_grpc.AdRankingStub(ch)

        def send(start: int, stop: int) -> None:
            for i in range(start, stop):
                req.model.name = f"m{i:07d}x" + "y" * (i % 100)  # valid, distinct, never loaded
                try:
                    stub.Score(req, timeout=5)
                    codes["OK"] = codes.get("OK", 0) + 1
                except grpc.RpcError as exc:
                    codes[exc.code().name] = codes.get(exc.code().name, 0) + 1

        send(0, 1_000)  # warm: every label set the refusals create exists now
        size0, rss0 = _metrics_bytes(port), _rss_kb(srv.proc.pid)
        send(1_000, N_NAMES)
        size1, rss1 = _metrics_bytes(port), _rss_kb(srv.proc.pid)
        req.model.name = ""
        assert stub.Score(req, timeout=5).candidates  # still serving
    print(f"\n{N_NAMES:,} distinct model names: {codes}; /metrics {size0:,} → {size1:,} bytes; "
          f"RSS {rss0:,} → {rss1:,} kB")
    assert codes == {"NOT_FOUND": N_NAMES}
    assert size1 <= size0 * 1.01, "request content grew /metrics"
    assert rss1 <= rss0 * 1.10, "request content grew the server's memory"
