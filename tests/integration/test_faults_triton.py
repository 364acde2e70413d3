"""Fault suite, Triton: a real tritonserver (the nvidia-pytriton bundle) SIGKILLed under a stream of
Score calls to the real `adrank serve --backend triton` process, then restarted on the same port.

Counts sent / ok (served by Triton) / degraded (served by the embedded fallback) / rejected / failed /
lost, and prints the figures docs/reliability.md quotes (`pytest -s`). A second server with
`--triton-fallback fail` watches the same Triton: its health must say NOT_SERVING while Triton is down.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest
import triton_fixtures
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.adrank.v1 import ranking_pb2_grpc
from serving.client import build_request
from serving.process import ServerProcess

MODEL = triton_fixtures.MODEL
triton_repo = triton_fixtures.triton_repo
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
pytestmark = pytest.mark.slow


class Load:
    """`callers` asyncio callers in a thread, each sending one Score at a time; every call is recorded as
    (sent at, outcome, latency) with outcome "triton" / "embedded" / a gRPC status name ("lost" when the
    client's deadline ran out: the server never answered)."""

    def __init__(self, target: str, requests: list, callers: int = 4) -> None:
        self.target, self.requests, self.callers = target, requests, callers
        self.records: list[tuple[float, str, float]] = []
        self.details: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        async with grpc.aio.insecure_channel(self.target) as ch:
            stub = ranking_pb2_grpc.AdRankingStub(ch)

            async def caller(k: int) -> None:
                i = k
                while not self._stop.is_set():
                    t0 = time.perf_counter()
                    try:
                        resp = await stub.Score(self.requests[i % len(self.requests)], timeout=1.0)
                        outcome = resp.served_by.backend
                    except grpc.aio.AioRpcError as err:
                        outcome = "lost" if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED else err.code().name
                        self.details.setdefault(outcome, err.details())
                    self.records.append((t0, outcome, time.perf_counter() - t0))
                    i += self.callers
                    await asyncio.sleep(0.002)

            await asyncio.gather(*(caller(k) for k in range(self.callers)))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def between(self, t0: float, t1: float) -> list[tuple[float, str, float]]:
        return [r for r in list(self.records) if t0 <= r[0] < t1]


def _counts(records: list) -> str:
    c = Counter(o for _, o, _ in records)
    lat = np.array([t for _, _, t in records] or [0.0]) * 1e3
    other = sum(n for o, n in c.items() if o not in ("triton", "embedded", "RESOURCE_EXHAUSTED", "lost"))
    return (f"sent {len(records)} ok(triton) {c['triton']} degraded(embedded) {c['embedded']} rejected "
            f"{c['RESOURCE_EXHAUSTED']} failed {other} lost {c['lost']}; p50 {np.percentile(lat, 50):.1f} ms "
            f"p99 {np.percentile(lat, 99):.1f} ms")


def _health(target: str) -> int:
    with grpc.insecure_channel(target) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status


def _sigkill(handle) -> None:
    """The whole group (server and its python-backend stubs) dies at once, as in a crashed container."""
    from serving.triton import launcher

    os.killpg(handle.pid, signal.SIGKILL)
    os.waitpid(handle.pid, 0)
    launcher.stop(handle)  # the process is gone: removes its shared-memory files and state record


def test_triton_killed_and_restarted_is_served_by_the_embedded_fallback(triton_repo: Path, tmp_path: Path) -> None:
    if importlib.util.find_spec("pytriton") is None:
        pytest.skip("nvidia-pytriton (the 'triton' extra) is not installed: pip install -e '.[triton]'")
    from serving.triton import launcher

    handle = launcher.start(triton_repo, models=[MODEL], state_dir=tmp_path / "triton")
    port = handle.grpc_port
    serve = ["--backend", "triton", "--triton-url", handle.grpc_url, "--repository", str(triton_repo),
             "--model", MODEL, "--readiness-interval-s", "0.2"]
    requests = [build_request(u, 50, None, seed=u, request_time_ms=1_700_000_000_000, model=MODEL)
                for u in range(20)]
    try:
        with ServerProcess([*serve, "--triton-fallback", "fallback"]) as srv, \
                ServerProcess([*serve, "--triton-fallback", "fail"]) as strict, Load(srv.target, requests) as load:
            time.sleep(1.5)
            t_kill = time.perf_counter()
            _sigkill(handle)
            time.sleep(1.5)
            health_down = (_health(srv.target), _health(strict.target))
            time.sleep(1.5)
            t_restart = time.perf_counter()
            handle = launcher.start(triton_repo, models=[MODEL], grpc_port=port, state_dir=tmp_path / "triton")
            t_up = time.perf_counter()
            time.sleep(6.0)
            t_end = time.perf_counter()
            health_up = (_health(srv.target), _health(strict.target))
            time.sleep(0.2)  # the log line of the breaker closing is flushed
            log = srv.log_text()
    finally:
        launcher.stop(handle)
    before, outage = load.between(0, t_kill), load.between(t_kill, t_up)
    after = load.between(t_up, t_end)
    first_fallback = next((t for t, o, _ in outage if o == "embedded"), None)
    opened = None if first_fallback is None else first_fallback - t_kill
    settled = [r for r in outage if r[0] >= t_kill + 1.0]  # the breaker has opened by then (asserted below)
    share = sum(o == "embedded" for _, o, _ in settled) / max(len(settled), 1)
    first_triton = next((t for t, o, _ in after if o == "triton"), None)
    back = None if first_triton is None else first_triton - t_up
    # the probe's success closes the breaker: calls sent once it has answered all go to Triton
    closed_at = next((t + dt for t, o, dt in after if o == "triton"), None)
    tail = [r for r in after if closed_at is not None and r[0] >= closed_at]
    print(f"\nTriton SIGKILL under load ({load.callers} callers, 50 candidates):\n  before {_counts(before)}\n"
          f"  outage ({t_up - t_kill:.1f} s, restart took {t_up - t_restart:.1f} s) {_counts(outage)}\n"
          f"  first fallback response {opened:.3f} s after the kill; {share:.2%} of {len(settled)} sent from "
          f"1 s after it served by embedded\n  after Triton ready {_counts(after)}; first Triton response "
          f"{back if back is None else round(back, 2)} s after it was ready\n  health during outage "
          f"(fallback, fail) {health_down}, after {health_up}; failures {load.details}")
    # calls in flight at the kill may be answered by the fallback, one per caller at most
    assert sum(o == "triton" for _, o, _ in before) >= len(before) - load.callers
    assert {o for _, o, _ in before} <= {"triton", "embedded"}
    assert opened is not None and opened <= 1.0
    assert len(settled) > 50 and share >= 0.99
    assert not [r for r in outage if r[1] not in ("triton", "embedded")], load.details  # nothing failed or lost
    assert back is not None and back <= 5.0
    assert tail and Counter(o for _, o, _ in tail) == {"triton": len(tail)}
    assert health_down == (SERVING, NOT_SERVING) and health_up == (SERVING, SERVING)
    assert "breaker open, serving with the embedded backend" in log and "answered the probe: breaker closed" in log
