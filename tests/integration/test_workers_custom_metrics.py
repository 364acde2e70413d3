"""`adrank serve --workers 2` with a LoopFM model: the embedding cache's custom collector (lookups, hit
rate, staleness) and the stage latency histogram are added up across both workers in the parent's
/metrics, like the prometheus_client counters beside them."""

from __future__ import annotations

import socket
import time
import urllib.request

import grpc
from prometheus_client.parser import text_string_to_metric_families

from models.catalog import load_catalog
from protos.adrank.v1 import ranking_pb2_grpc
from serving.client import build_request
from serving.process import ServerProcess

CHANNELS = 16  # each a new connection; the kernel spreads connections over the workers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _samples(metrics_port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_cache_and_stage_metrics_add_up_across_two_workers(loopfm_run):
    catalog = load_catalog(loopfm_run["dir"] / "catalog.npz")
    ev = loopfm_run["events"]
    t = int(ev["ts_ms"][-1]) + 1
    known, unknown = int(ev["user_id"][-1]), 10**9  # one user with history, one the cache has never seen
    metrics_port = _free_port()
    args = ["--repository", str(loopfm_run["repo"]), "--model", "vm_loopfm", "--cache-dir", str(loopfm_run["cache"]),
            "--workers", "2", "--metrics-port", str(metrics_port)]
    with ServerProcess(args) as srv:
        for i in range(CHANNELS):
            with grpc.insecure_channel(srv.target) as ch:
                user = unknown if i % 4 == 0 else known
                ranking_pb2_grpc.AdRankingStub(ch).Score(build_request(user, 20, catalog, seed=i, request_time_ms=t),
                                                         timeout=10)
        labels = (("backend", "embedded"), ("fm_version", "fm-test01"))
        deadline = time.monotonic() + 10
        while True:  # workers write their custom collectors twice a second
            samples = _samples(metrics_port)
            if samples.get(("adrank_cache_user_lookups_total", labels)) == CHANNELS or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    per_worker = [samples.get(("adrank_worker_score_requests_total", (("worker", w),)), 0.0) for w in "01"]
    assert all(n > 0 for n in per_worker) and sum(per_worker) == CHANNELS, per_worker  # both workers served
    assert samples[("adrank_cache_user_lookups_total", labels)] == CHANNELS  # every lookup, whichever worker
    hits = samples[("adrank_cache_user_hits_total", labels)]
    assert hits == CHANNELS - CHANNELS // 4  # the unknown user falls back on every worker
    assert samples[("adrank_cache_hit_rate", labels)] == hits / CHANNELS
    assert samples[("adrank_cache_staleness_ms_count", labels)] == hits
    for stage in ("decode", "history", "infer", "encode"):
        assert samples[("adrank_stage_latency_seconds_count", (("stage", stage),))] == CHANNELS
