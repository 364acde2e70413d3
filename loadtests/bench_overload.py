"""Overload acceptance figures: a real `adrank serve` process at its capacity, then offered 3x it.

Phase 1 (capacity): `max_in_flight` closed-loop callers, each sending its next call when the last one
answers: the throughput they reach is the capacity, their p99 the p99 at capacity. Phase 2 (3x): an
open-loop load at three times that rate (calls are sent on schedule whether or not earlier ones have
answered, as independent users do). Load comes from separate client processes (`--clients`), so the
client's own GIL does not stretch the latencies it measures; a further process checks health every
50 ms. Printed per admission variant, against the same-run baseline of phase 1:

- every call answered (OK or RESOURCE_EXHAUSTED; anything else is counted as failed, a client
  deadline as lost);
- accepted p99 at 3x / p99 at capacity (target <= 2);
- refusal latency p50 / p99, split into refused at once and refused after the queue wait;
- health checks: count, slowest, how many were not SERVING or failed;
- server RSS before, peak during and after the 3x phase (target flat within +-10 %).

Variants: `queue` (a queue of `max_in_flight` waiting at most 20 ms), `no-queue` (max_queued 0, the
default: refuse at once), `grpc-limit` (admission off, grpc.aio's `maximum_concurrent_rpcs` at
the same total: refused inside grpc before the handler runs, but health calls count too).

The server is the fault suite's slow model by default (`tests/integration/slow_server.py`: each
inference awaits `--infer-ms`, an I/O-bound model as with Triton, so capacity = in_flight / infer time);
`--repository` runs a real model repository instead.

    python -m loadtests.bench_overload                       # all three variants, ~40 s
    python -m loadtests.bench_overload --variant queue --seconds 5 --json runs/bench/overload.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SLOW_SERVER = ROOT / "tests" / "integration" / "slow_server.py"
METHOD = "/adrank.v1.AdRanking/Score"
VARIANTS = ("queue", "no-queue", "grpc-limit")


def _outcome(err) -> tuple[str, str]:
    import grpc

    code = err.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "lost", ""
    kind = ""
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        details = err.details() or ""
        kind = "queued" if "no slot within" in details else "at_once"
    return code.name, kind


def _client(target: str, payload: bytes, start_at: float, seconds: float, rate: float, callers: int,
            timeout_s: float) -> list[tuple[float, str, str, float]]:
    """One client process: open loop at `rate` calls/s, or `callers` closed-loop callers when rate is 0.
    Returns (sent at, code, refusal kind, latency s) per call."""
    import grpc

    async def run() -> list:
        out: list = []
        async with grpc.aio.insecure_channel(target) as ch:
            call = ch.unary_unary(METHOD)
            try:
                await call(payload, timeout=5)  # connect before the clock starts
            except grpc.aio.AioRpcError:
                pass
            await asyncio.sleep(max(0.0, start_at - time.time()))
            t_end = time.perf_counter() + seconds

            async def one() -> None:
                t0 = time.perf_counter()
                try:
                    await call(payload, timeout=timeout_s)
                    code, kind = "OK", ""
                except grpc.aio.AioRpcError as err:
                    code, kind = _outcome(err)
                out.append((t0, code, kind, time.perf_counter() - t0))

            if rate <= 0:
                async def loop() -> None:
                    while time.perf_counter() < t_end:
                        await one()
                await asyncio.gather(*(loop() for _ in range(callers)))
                return out
            tasks, t0, k = [], time.perf_counter(), 0
            while True:
                at = t0 + k / rate
                if at >= t_end:
                    break
                await asyncio.sleep(max(0.0, at - time.perf_counter()))
                tasks.append(asyncio.ensure_future(one()))
                k += 1
            await asyncio.gather(*tasks)
        return out

    return asyncio.run(run())


def _prober(target: str, start_at: float, seconds: float) -> list[tuple[str, float]]:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    out = []
    with grpc.insecure_channel(target) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        time.sleep(max(0.0, start_at - time.time()))
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            try:
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(
                    stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status)
            except grpc.RpcError as err:
                status = err.code().name
            out.append((status, time.perf_counter() - t0))
            time.sleep(0.05)
    return out


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _buckets(metrics_port: int, code: str) -> dict[float, float]:
    """Cumulative counts of the server's own latency histogram for `code`, by upper bound (s)."""
    import re
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    out: dict[float, float] = {}
    for m in re.finditer(r'^adrank_score_latency_seconds_bucket\{([^}]*)\} (\S+)$', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels.get("code") == code:
            le = float(labels["le"])
            out[le] = out.get(le, 0.0) + float(m.group(2))
    return out


def _server_p99_ms(before: dict[float, float], after: dict[float, float]) -> float | None:
    """The upper bound of the histogram bucket holding the 99th percentile of what was added between
    two scrapes: the server's own time for a call, free of client and scheduling noise."""
    diff = sorted((le, after.get(le, 0.0) - before.get(le, 0.0)) for le in after)
    total = diff[-1][1] if diff else 0.0
    if total <= 0:
        return None
    return next(le * 1e3 for le, n in diff if n >= 0.99 * total)


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.asarray(values) * 1e3, q)), 2) if values else None


def _phase(pool: ProcessPoolExecutor, target: str, payload: bytes, *, seconds: float, clients: int,
           rate: float = 0.0, callers: int = 0, probe: bool = False) -> tuple[list, list]:
    start_at = time.time() + 1.5
    futures = [pool.submit(_client, target, payload, start_at, seconds, rate / clients,
                           max(1, callers // clients) + (1 if i < callers % clients else 0) if callers else 0, 2.0)
               for i in range(clients)]
    health = pool.submit(_prober, target, start_at, seconds) if probe else None
    calls = [r for f in futures for r in f.result()]
    return calls, (health.result() if health else [])


def run_variant(variant: str, a: argparse.Namespace, payload: bytes) -> dict:
    from serving.process import ServerProcess
    from serving.triton.launcher import free_port

    total, metrics_port = a.in_flight * 2, free_port()
    env = {"ADRANK_MAX_IN_FLIGHT": str(a.in_flight), "ADRANK_MAX_QUEUED": str(a.in_flight),
           "ADRANK_MAX_QUEUE_WAIT_MS": "20", "ADRANK_RETRY_AFTER_MS": "100", "SLOW_INFER_MS": str(a.infer_ms),
           "ADRANK_ACCESS_LOG_FAILURES_PER_S": "10", "ADRANK_METRICS_PORT": str(metrics_port)}
    if variant == "no-queue":
        env["ADRANK_MAX_QUEUED"] = "0"
    elif variant == "grpc-limit":
        env.update(ADRANK_MAX_IN_FLIGHT="0", ADRANK_MAX_CONCURRENT_RPCS=str(total))
    if a.repository:
        server = ServerProcess(["--repository", a.repository], env=env)
    else:
        server = ServerProcess([], launcher=[sys.executable, str(SLOW_SERVER)], env=env)
    with server as srv, ProcessPoolExecutor(a.clients + 1, mp_context=get_context("spawn")) as pool:
        base, _ = _phase(pool, srv.target, payload, seconds=a.seconds, clients=a.clients, callers=a.in_flight)
        base_ok = [t for _, c, _, t in base if c == "OK"]
        capacity = len(base_ok) / a.seconds
        rss: list[int] = [_rss_kb(srv.proc.pid)]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.2):
                rss.append(_rss_kb(srv.proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        before = _buckets(metrics_port, "RESOURCE_EXHAUSTED")
        calls, health = _phase(pool, srv.target, payload, seconds=a.seconds, clients=a.clients,
                               rate=3 * capacity, probe=True)
        stop.set()
        sampler.join()
        time.sleep(0.5)
        rss_after = _rss_kb(srv.proc.pid)
        server_refused_p99 = _server_p99_ms(before, _buckets(metrics_port, "RESOURCE_EXHAUSTED"))
    codes: dict[str, int] = {}
    for _, c, _, _ in calls:
        codes[c] = codes.get(c, 0) + 1
    ok = [t for _, c, _, t in calls if c == "OK"]
    refused = [t for _, c, _, t in calls if c == "RESOURCE_EXHAUSTED"]
    at_once = [t for _, c, k, t in calls if c == "RESOURCE_EXHAUSTED" and k == "at_once"]
    queued = [t for _, c, k, t in calls if c == "RESOURCE_EXHAUSTED" and k == "queued"]
    p99_cap, p99_over = _pct(base_ok, 99), _pct(ok, 99)
    return {
        "variant": variant, "capacity_per_s": round(capacity, 1), "offered_per_s": round(3 * capacity, 1),
        "at_capacity": {"sent": len(base), "ok": len(base_ok), "p50_ms": _pct(base_ok, 50), "p99_ms": p99_cap},
        "overload": {"sent": len(calls), "codes": codes, "answered": sum(v for k, v in codes.items() if k != "lost"),
                     "accepted_p50_ms": _pct(ok, 50), "accepted_p99_ms": p99_over,
                     "accepted_p99_ratio": round(p99_over / p99_cap, 2) if p99_cap and p99_over else None,
                     "refused_p50_ms": _pct(refused, 50), "refused_p99_ms": _pct(refused, 99),
                     "refused_at_once": len(at_once), "refused_at_once_p99_ms": _pct(at_once, 99),
                     "refused_after_queue_wait": len(queued), "refused_after_queue_wait_p99_ms": _pct(queued, 99),
                     "server_refused_p99_ms_at_most": server_refused_p99},
        "health": {"checks": len(health), "max_ms": _pct([t for _, t in health], 100),
                   "not_serving": sum(s != "SERVING" for s, _ in health)},
        "rss_kb": {"before": rss[0], "peak": max(rss), "after": rss_after,
                   "change": round(rss_after / rss[0] - 1, 3) if rss[0] else None},
    }


def _payload(a: argparse.Namespace) -> bytes:
    if a.repository:
        from serving.client import build_request

        return build_request(7, a.candidates, None, seed=1).SerializeToString()
    sys.path.insert(0, str(ROOT / "tests" / "unit" / "serving"))
    import serving_fakes

    return serving_fakes.request(a.candidates).SerializeToString()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", choices=(*VARIANTS, "all"), default="all")
    p.add_argument("--seconds", type=float, default=4.0, help="length of each phase")
    p.add_argument("--in-flight", type=int, default=8, help="max_in_flight (and the queue's length)")
    p.add_argument("--infer-ms", type=int, default=50, help="the slow model's inference time")
    p.add_argument("--candidates", type=int, default=5)
    p.add_argument("--clients", type=int, default=2, help="client processes")
    p.add_argument("--repository", default="", help="a real model repository instead of the slow model")
    p.add_argument("--json", default="", help="also write the figures here")
    a = p.parse_args(argv)
    payload = _payload(a)
    load = os.getloadavg()
    results = [run_variant(v, a, payload) for v in (VARIANTS if a.variant == "all" else (a.variant,))]
    for r in results:
        o, h, m = r["overload"], r["health"], r["rss_kb"]
        print(f"{r['variant']}: capacity {r['capacity_per_s']}/s (p99 {r['at_capacity']['p99_ms']} ms); at 3x "
              f"({r['offered_per_s']}/s) sent {o['sent']} answered {o['answered']} {o['codes']}; accepted p99 "
              f"{o['accepted_p99_ms']} ms ({o['accepted_p99_ratio']}x); refused p50/p99 {o['refused_p50_ms']}/"
              f"{o['refused_p99_ms']} ms (at once {o['refused_at_once']}, p99 {o['refused_at_once_p99_ms']} ms; "
              f"after queue wait {o['refused_after_queue_wait']}, p99 {o['refused_after_queue_wait_p99_ms']} ms; "
              f"server-side p99 <= "
              f"{o['server_refused_p99_ms_at_most']} ms); "
              f"health {h['checks']} checks max {h['max_ms']} ms not SERVING {h['not_serving']}; RSS "
              f"{m['before']} -> peak {m['peak']} -> {m['after']} kB ({m['change']:+.1%})")
    print(f"load average before the run {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"load_average": load, "cpus": os.cpu_count(), "results": results},
                                           indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
