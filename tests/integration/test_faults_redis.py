"""Fault suite, embedding cache: a real redis-server SIGKILLed and restarted, then SIGSTOPped, under a
stream of LoopFM requests to the real `adrank serve` process. Counts sent / ok / degraded / failed and
prints the figures docs/reliability.md quotes (`pytest -s`)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import cache_fixtures
import grpc
import numpy as np
import pytest
import redis

from models.catalog import load_catalog
from models.embed import CacheLocation, publish_codes
from protos.adrank.v1 import ranking_pb2, ranking_pb2_grpc
from serving.client import build_request
from serving.process import ServerProcess

DEGRADED = ranking_pb2.FLAG_HISTORY_CACHE_UNAVAILABLE


def _start_redis(port: int, data_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(data_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            return proc
        except redis.exceptions.ConnectionError:
            time.sleep(0.02)
    raise RuntimeError("redis-server did not start")


class Stream:
    """Sequential LoopFM requests in a thread, each recorded as (sent at, outcome, latency)."""

    def __init__(self, target: str, requests: list) -> None:
        self.target, self.requests = target, requests
        self.records: list[tuple[float, str, float]] = []
        self.details: dict[str, str] = {}  # the first message of each failure code
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with grpc.insecure_channel(self.target) as ch:
            stub = ranking_pb2_grpc.AdRankingStub(ch)
            i = 0
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    resp = stub.Score(self.requests[i % len(self.requests)], timeout=1.0)
                    outcome = "degraded" if DEGRADED in resp.flags else "ok"
                except grpc.RpcError as err:
                    outcome = err.code().name
                    self.details.setdefault(outcome, err.details())
                self.records.append((t0, outcome, time.perf_counter() - t0))
                i += 1
                time.sleep(0.002)

    def __enter__(self) -> Stream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def between(self, t0: float, t1: float) -> list[tuple[float, str, float]]:
        return [r for r in self.records if t0 <= r[0] < t1]


@pytest.fixture()
def loopfm_on_redis(loopfm_run, tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not found")
    port = cache_fixtures.free_port()
    proc = _start_redis(port, tmp_path)
    url = f"redis://127.0.0.1:{port}/0"
    ev = loopfm_run["events"]
    publish_codes(CacheLocation("redis", url), "fm-test01", ev, np.arange(len(ev)), loopfm_run["codes"], codec="int8")
    redis.Redis(port=port).save()  # a restarted redis-server reloads it from --dir
    catalog = load_catalog(loopfm_run["dir"] / "catalog.npz")
    users = np.unique(ev["user_id"])[:50]
    reqs = [build_request(int(u), 50, catalog, seed=int(u), request_time_ms=int(ev["ts_ms"][-1]) + 1) for u in users]
    state = {"proc": proc, "port": port, "dir": tmp_path, "url": url, "requests": reqs}
    yield state
    if state["proc"].poll() is None:
        state["proc"].send_signal(signal.SIGCONT)
        state["proc"].kill()
        state["proc"].wait()


def _serve(loopfm_run, url: str) -> ServerProcess:
    return ServerProcess(["--repository", str(loopfm_run["repo"]), "--model", "vm_loopfm", "--cache-url", url,
                          "--cache-refresh-s", "0.5"])


def _summary(records: list) -> str:
    codes = Counter(o for _, o, _ in records)
    lat = np.array([t for _, _, t in records]) * 1e3
    return f"{len(records)} sent {dict(codes)} p50 {np.percentile(lat, 50):.1f} ms p99 {np.percentile(lat, 99):.1f} ms"


def test_redis_killed_and_restarted_scores_with_the_prior_and_recovers(loopfm_run, loopfm_on_redis) -> None:
    s = loopfm_on_redis
    with _serve(loopfm_run, s["url"]) as srv, Stream(srv.target, s["requests"]) as stream:
        time.sleep(1.0)
        t_kill = time.perf_counter()
        s["proc"].kill()
        s["proc"].wait()
        time.sleep(3.0)
        t_back = time.perf_counter()
        s["proc"] = _start_redis(s["port"], s["dir"])
        t_up = time.perf_counter()
        time.sleep(3.0)
        t_end = time.perf_counter()
    before, outage = stream.between(0, t_kill), stream.between(t_kill, t_back)
    after = stream.between(t_up, t_end)
    first_ok = next((t for t, o, _ in after if o == "ok"), None)
    recovery = None if first_ok is None else first_ok - t_up
    tail_after = [r for r in after if first_ok is not None and r[0] >= first_ok]
    flagged = sum(o == "degraded" for _, o, _ in outage) / len(outage)
    print(f"\nredis SIGKILL: before {_summary(before)}\n  outage {_summary(outage)} ({flagged:.1%} scored and "
          f"flagged; first failures {stream.details})\n  after restart {_summary(after)}; "
          f"recovery {recovery:.2f} s after redis answered")
    assert sum(o == "ok" for _, o, _ in before) >= len(before) - 1  # one may be in flight at the kill
    assert flagged >= 0.99
    assert recovery is not None and recovery <= 2.0
    assert {o for _, o, _ in tail_after} == {"ok"}


def test_redis_paused_keeps_p99_within_the_request_budget(loopfm_run, loopfm_on_redis) -> None:
    s = loopfm_on_redis
    with _serve(loopfm_run, s["url"]) as srv, Stream(srv.target, s["requests"]) as stream:
        time.sleep(1.0)
        t_stop = time.perf_counter()
        s["proc"].send_signal(signal.SIGSTOP)
        time.sleep(4.0)
        t_cont = time.perf_counter()
        s["proc"].send_signal(signal.SIGCONT)
        time.sleep(3.0)
    paused = stream.between(t_stop, t_cont)
    lat = np.array([t for _, _, t in paused])
    print(f"\nredis SIGSTOP: paused {_summary(paused)}; after SIGCONT {_summary(stream.between(t_cont + 2.0, 1e18))}")
    assert {o for _, o, _ in paused} <= {"ok", "degraded"}
    assert np.percentile(lat, 99) < 1.0  # the default max_deadline_ms
    assert {o for _, o, _ in stream.between(t_cont + 2.0, 1e18)} == {"ok"}
