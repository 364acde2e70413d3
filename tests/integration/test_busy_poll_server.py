"""`adrank serve --busy-poll-us` on real processes: two workers on the idle-polling loop answer with the
same scores as a plain server, and the parent's /metrics adds up both workers' busy-poll counters (their
spins found requests). A value over the limit is refused at start naming the flag."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import cache_fixtures
import grpc
from prometheus_client.parser import text_string_to_metric_families

from models.catalog import load_catalog
from protos.adrank.v1 import ranking_pb2_grpc
from serving.client import build_request
from serving.process import ServerProcess

CHANNELS, CALLS = 8, 10  # each channel a new connection: the kernel spreads them over the workers


def _samples(port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _scores(srv: ServerProcess, requests) -> list[list[float]]:
    out = []
    for i in range(CHANNELS):
        with grpc.insecure_channel(srv.target) as ch:
            stub = ranking_pb2_grpc.AdRankingStub(ch)
            for req in requests[i * CALLS:(i + 1) * CALLS]:
                out.append([c.p_ctr for c in stub.Score(req, timeout=10).candidates])
    return out


def test_busy_polled_workers_score_like_a_plain_server_and_count_their_spins(tiny_run):
    catalog = load_catalog(tiny_run / "catalog.npz")
    t = int(catalog["max_ts_ms"][0])
    requests = [build_request(i, 20, catalog, seed=i, request_time_ms=t) for i in range(CHANNELS * CALLS)]
    repo = ["--repository", str(tiny_run / "model_repository")]
    with ServerProcess([*repo, "--workers", "1"]) as plain:
        expected = _scores(plain, requests)
    port = cache_fixtures.free_port()
    with ServerProcess([*repo, "--workers", "2", "--busy-poll-us", "2000", "--metrics-port", str(port)]) as srv:
        got = _scores(srv, requests)
        deadline = time.monotonic() + 10
        while True:  # workers write their custom collectors twice a second
            samples = _samples(port)
            served = sum(samples.get(("adrank_worker_score_requests_total", (("worker", w),)), 0.0) for w in "01")
            if samples.get(("adrank_busy_poll_hits_total", ()), 0) > 0 and served == len(requests) \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert got == expected
    per_worker = [samples.get(("adrank_worker_score_requests_total", (("worker", w),)), 0.0) for w in "01"]
    assert all(n > 0 for n in per_worker) and sum(per_worker) == len(requests), per_worker
    spins, hits = samples[("adrank_busy_poll_spins_total", ())], samples[("adrank_busy_poll_hits_total", ())]
    # sequential calls: the next request (or its next HTTP/2 frame) arrives within 2 ms of the last wake-up
    assert spins >= hits >= len(requests), (spins, hits)
    assert samples[("adrank_busy_poll_spin_seconds_total", ())] > 0


def test_busy_poll_over_the_limit_is_refused_naming_the_flag(tiny_run):
    done = subprocess.run([sys.executable, "-m", "adrank", "serve", "--repository", str(tiny_run / "model_repository"),
                           "--busy-poll-us", "100001"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--busy-poll-us" in done.stderr and "100000" in done.stderr, done.stderr
