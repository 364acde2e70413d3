"""Fault suite: overload, deadlines and SIGTERM against a real server process (a fake model that
takes a known time, `slow_server.py`), each run counting sent / ok / rejected / failed / lost.

Every test prints its figures (`pytest -s` shows them; docs/reliability.md quotes them).
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import cache_fixtures
import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.adrank.v1 import ranking_pb2_grpc
from serving.process import ServerProcess

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "serving"))
import serving_fakes as fakes  # noqa: E402

LAUNCHER = [sys.executable, str(Path(__file__).with_name("slow_server.py"))]
NOT_SERVING, SERVING = health_pb2.HealthCheckResponse.NOT_SERVING, health_pb2.HealthCheckResponse.SERVING


def _server(env: dict[str, str]) -> ServerProcess:
    return ServerProcess([], launcher=LAUNCHER, env=env)


async def _score(stub, timeout: float) -> tuple[str, float, tuple]:
    t0 = time.perf_counter()
    try:
        call = stub.Score(fakes.request(5), timeout=timeout)
        await call
        return "OK", time.perf_counter() - t0, ()
    except grpc.aio.AioRpcError as err:
        return err.code().name, time.perf_counter() - t0, tuple(err.trailing_metadata() or ())


def _metric(port: int, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:{{(.*)}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    assert want is not None
    return total


def test_overload_at_three_times_capacity_is_shed_fast_and_health_answers() -> None:
    # capacity: 8 in flight x 50 ms = 160 req/s; 48 callers backing off 100 ms offer about 3x that
    env = {"ADRANK_MAX_IN_FLIGHT": "8", "ADRANK_MAX_QUEUED": "8", "ADRANK_MAX_QUEUE_WAIT_MS": "20",
           "ADRANK_RETRY_AFTER_MS": "100", "SLOW_INFER_MS": "50"}

    async def run(target: str) -> tuple[list, list]:
        results: list = []
        health: list[tuple[int, float]] = []
        async with grpc.aio.insecure_channel(target) as ch, grpc.aio.insecure_channel(target) as hch:
            stub, hstub = ranking_pb2_grpc.AdRankingStub(ch), health_pb2_grpc.HealthStub(hch)
            end = time.perf_counter() + 3.0

            async def caller() -> None:  # honours the retry hint, as a well-behaved client does
                while time.perf_counter() < end:
                    results.append(await _score(stub, 2.0))
                    if results[-1][0] == "RESOURCE_EXHAUSTED":
                        await asyncio.sleep(int(dict(results[-1][2])["retry-after-ms"]) / 1e3)

            async def prober() -> None:
                await asyncio.sleep(0.3)
                while time.perf_counter() < end:
                    t0 = time.perf_counter()
                    r = await hstub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                    health.append((r.status, time.perf_counter() - t0))
                    await asyncio.sleep(0.05)

            await asyncio.gather(*(caller() for _ in range(48)), prober())
        return results, health

    with _server(env) as srv:
        results, health = asyncio.run(run(srv.target))
    codes = Counter(code for code, _, _ in results)
    rejected = np.array([t for code, t, _ in results if code == "RESOURCE_EXHAUSTED"])
    accepted = np.array([t for code, t, _ in results if code == "OK"])
    health_s = np.array([t for _, t in health])
    print(f"\noverload: sent {len(results)} {dict(codes)}; accepted p50 {np.percentile(accepted, 50) * 1e3:.1f} ms "
          f"p99 {np.percentile(accepted, 99) * 1e3:.1f} ms; rejected p50 {np.percentile(rejected, 50) * 1e3:.2f} ms "
          f"p99 {np.percentile(rejected, 99) * 1e3:.2f} ms; health {len(health)} checks, max "
          f"{health_s.max() * 1e3:.1f} ms")
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes  # every call answered, none failed or lost
    assert codes["OK"] > 0 and codes["RESOURCE_EXHAUSTED"] > codes["OK"]
    hints = {dict(md).get("retry-after-ms") for code, _, md in results if code == "RESOURCE_EXHAUSTED"}
    assert hints == {"100"}
    # latency figures (refusal p99, slowest health check) are the benchmark's: loadtests/bench_overload.py
    assert health and all(status == SERVING for status, _ in health)  # every health check answered, SERVING


def test_overload_benchmark_answers_every_call_and_keeps_health_serving(tmp_path: Path) -> None:
    """The acceptance benchmark's own run, short: its figures are printed, its behaviour asserted."""
    import json

    from loadtests.bench_overload import main

    out = tmp_path / "overload.json"
    assert main(["--variant", "no-queue", "--seconds", "1.5", "--json", str(out)]) == 0
    (result,) = json.loads(out.read_text())["results"]
    over = result["overload"]
    assert result["capacity_per_s"] > 0 and over["sent"] > 0
    assert over["answered"] == over["sent"] and set(over["codes"]) <= {"OK", "RESOURCE_EXHAUSTED"}
    assert over["codes"].get("RESOURCE_EXHAUSTED", 0) > 0 and over["refused_after_queue_wait"] == 0
    assert result["health"]["checks"] > 0 and result["health"]["not_serving"] == 0


def test_a_passed_deadline_stops_the_request_before_infer() -> None:
    metrics_port = cache_fixtures.free_port()
    env = {"SLOW_FEATURES_MS": "20", "ADRANK_METRICS_PORT": str(metrics_port)}

    async def run(target: str) -> list:
        async with grpc.aio.insecure_channel(target) as ch:
            stub = ranking_pb2_grpc.AdRankingStub(ch)
            await _score(stub, 5.0)  # connect and warm up: one call runs to the end
            return [await _score(stub, 0.002) for _ in range(20)]

    with _server(env) as srv:
        results = asyncio.run(run(srv.target))
        time.sleep(0.2)
        expired = _metric(metrics_port, "adrank_deadline_expired_total")
        at_infer = _metric(metrics_port, "adrank_deadline_expired_total", stage="infer")
        infers = _metric(metrics_port, "adrank_stage_latency_seconds_count", stage="infer")
        counted = _metric(metrics_port, "adrank_score_requests_total", code="DEADLINE_EXCEEDED")
    codes = Counter(code for code, _, _ in results)
    print(f"\ndeadline 2 ms, features stage 20 ms: client {dict(codes)}; server expired {expired:.0f} "
          f"(at infer {at_infer:.0f}), counted DEADLINE_EXCEEDED {counted:.0f}, infer ran {infers:.0f}x")
    assert codes == {"DEADLINE_EXCEEDED": 20}
    assert infers == 1  # only the warm-up call was scored
    # calls whose deadline has passed on arrival never reach the handler (grpc drops them); every one
    # that did was stopped at a stage boundary and counted, and none was scored
    assert 1 <= expired == counted <= 20 and at_infer >= 1


def test_sigterm_with_100_in_flight_loses_none() -> None:
    env = {"ADRANK_DRAIN_DELAY_S": "1.0", "ADRANK_DRAIN_TIMEOUT_S": "10", "SLOW_INFER_MS": "300",
           "ADRANK_MAX_IN_FLIGHT": "200"}

    async def run(srv: ServerProcess) -> tuple[list, list, list]:
        async with grpc.aio.insecure_channel(srv.target) as ch, grpc.aio.insecure_channel(srv.target) as hch:
            stub, hstub = ranking_pb2_grpc.AdRankingStub(ch), health_pb2_grpc.HealthStub(hch)
            await _score(stub, 5.0)
            first = [asyncio.ensure_future(_score(stub, 10.0)) for _ in range(100)]
            await asyncio.sleep(0.1)  # all 100 in flight (each takes 300 ms)
            srv.proc.send_signal(signal.SIGTERM)
            health: list[int] = []
            during: list = []
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < 0.8:  # inside the 1 s drain delay: still served
                health.append((await hstub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)).status)
                during.append(await _score(stub, 5.0))
            await asyncio.sleep(0.5)  # past the delay: no longer accepting
            after = [await _score(stub, 2.0) for _ in range(3)]
            return list(await asyncio.gather(*first)), health, during + after

    srv = _server(env).start()
    try:
        in_flight, health, later = asyncio.run(run(srv))
        rc = srv.proc.wait(15)
    finally:
        srv.stop()
    codes = Counter(code for code, _, _ in in_flight)
    later_codes = Counter(code for code, _, _ in later)
    print(f"\nSIGTERM with 100 in flight: {dict(codes)}; during/after the delay {dict(later_codes)}; "
          f"health during delay {Counter(health)}; exit {rc}")
    assert codes == {"OK": 100}
    assert health and set(health) == {NOT_SERVING}
    assert set(later_codes) <= {"OK", "UNAVAILABLE"} and later_codes["OK"] > 0 and later[-1][0] == "UNAVAILABLE"
    assert rc == 0


@pytest.mark.parametrize("fallback", ["prior", "fail"])
def test_health_follows_readiness(fallback: str) -> None:
    env = {"ADRANK_READINESS_INTERVAL_S": "0.1", "ADRANK_CACHE_FALLBACK": fallback}
    with _server(env) as srv:
        assert srv.health("") == SERVING and srv.health("adrank.v1.AdRanking") == SERVING
        assert srv.health("adrank.liveness") == SERVING
