"""`adrank serve --workers 2` as a real process tree: both workers answer on the one port, /metrics adds
them up, SIGTERM drains both at once (health NOT_SERVING from every connection) and leaves no process."""

from __future__ import annotations

import os
import signal
import socket
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from models.catalog import load_catalog
from protos.adrank.v1 import ranking_pb2_grpc
from serving.client import build_request, to_columns
from serving.process import ServerProcess

CHANNELS = 16  # each a new connection; the kernel spreads connections over the workers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # fields after the command: state, ppid, ...
            out.append(int(stat.parent.name))
    return out


def _samples(metrics_port: int) -> dict[tuple[str, tuple], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _health(target: str) -> int:
    with grpc.insecure_channel(target) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def test_two_workers_serve_one_port_add_up_metrics_and_drain_as_one(tiny_run: Path):
    catalog = load_catalog(tiny_run / "catalog.npz")
    req = build_request(int(catalog["user_id"][2]), 50, catalog, seed=5, request_time_ms=int(catalog["max_ts_ms"][0]))
    metrics_port = _free_port()
    srv = ServerProcess(["--repository", str(tiny_run / "model_repository"), "--workers", "2",
                         "--metrics-port", str(metrics_port)], env={"ADRANK_DRAIN_DELAY_S": "2"})
    with srv:
        workers = _children(srv.proc.pid)
        assert len(workers) == 2, workers
        for _ in range(CHANNELS):
            with grpc.insecure_channel(srv.target) as ch:
                stub = ranking_pb2_grpc.AdRankingStub(ch)
                stub.Score(req, timeout=10)
                stub.ScoreColumns(to_columns(req), timeout=10)
        samples = _samples(metrics_port)
        per_worker = {w: samples.get(("adrank_worker_score_requests_total", (("worker", w),)), 0.0) for w in "01"}
        assert all(n > 0 for n in per_worker.values()), per_worker  # both workers answered
        assert sum(per_worker.values()) == 2 * CHANNELS
        ok = samples[("adrank_score_requests_total", (("code", "OK"), ("model", "vm"), ("version", "1")))]
        assert ok == 2 * CHANNELS  # the parent's /metrics adds both workers' counters up
        assert samples[("adrank_scored_candidates_total", (("model", "vm"),))] == 2 * CHANNELS * 50

        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        # every new connection, whichever worker it reaches, sees the unit draining
        assert [_health(srv.target) for _ in range(8)] == [health_pb2.HealthCheckResponse.NOT_SERVING] * 8
        assert srv.proc.wait(40) == 0, srv.log_text()[-3000:]
        log = srv.log_text()
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers), "a worker outlived the drain"
    assert log.count("drained; exiting") == 2 and "workers drained (exit codes [0, 0])" in log


def test_a_worker_that_dies_takes_the_unit_down(tiny_run: Path):
    with ServerProcess(["--repository", str(tiny_run / "model_repository"), "--workers", "2"]) as srv:
        first, second = sorted(_children(srv.proc.pid))
        os.kill(first, signal.SIGKILL)
        assert srv.proc.wait(40) == 1  # the other worker drained, the parent reports the failure
        assert not Path(f"/proc/{second}").exists()
        assert "exited with -9: draining the others" in srv.log_text()
