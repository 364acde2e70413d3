"""Scaling figures for docs/scaling.md, each a ratio against a baseline measured in the same run.

    python -m stack.bench replicas [--seconds 10] [--triton] [--json F]  # h2load: 1 direct, 1 and 2 behind haproxy
    python -m stack.bench redis-memory [--users 5000] [--json F] # INFO memory per user per codec, 1 node and a cluster

`replicas` starts real stacks with `adrank up`'s code (the demo's LoopFM model, its cache copied into Redis),
drives them with h2load (`-c 4 -m 8`, one 200-candidate request, framed for gRPC) and checks h2load's count
against the replicas' own OK counters, because h2load counts gRPC errors as successes. CPU per process group
(a process and its children, e.g. Triton's python stubs) is utime+stime from /proc over the run.
`redis-memory` publishes `--users` users × L codes through `RedisWriter` into a fresh redis-server (and a
3-primary cluster) and reads `used_memory` before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pgid: int) -> float:
    """utime + stime of every live process in the group (Triton's python stubs, nginx's workers), in seconds."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def _ok(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return sum(float(v) for v in re.findall(r'^adrank_score_requests_total\{code="OK"[^}]*\} (\S+)$', text, re.M))


def _load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def _h2load(target: str, body: Path, seconds: int, log: Path) -> dict:
    log.unlink(missing_ok=True)
    cmd = ["h2load", "-D", str(seconds), "-c", "4", "-m", "8", "-H", "content-type: application/grpc",
           "-H", "te: trailers", "-d", str(body), "--log-file", str(log),
           f"http://{target}/adrank.v1.AdRanking/Score"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    done = int(re.search(r"(\d+) succeeded", out).group(1))
    lat_ms = np.sort(np.loadtxt(log, usecols=2, ndmin=1)) / 1000.0  # column 3: request time in µs
    p50, p90, p99 = (float(np.percentile(lat_ms, q)) for q in (50, 90, 99))
    return {"succeeded": done, "rps": done / seconds, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99}


def _request_body(catalog: Path, model: str, out: Path) -> Path:
    from models.catalog import load_catalog
    from serving.client import build_request

    cat = load_catalog(catalog)
    req = build_request(int(cat["user_id"][0]), 200, cat, seed=0, request_time_ms=int(cat["max_ts_ms"][0]) + 1,
                        model=model)
    raw = req.SerializeToString()
    out.write_bytes(b"\0" + struct.pack(">I", len(raw)) + raw)
    return out


def bench_replicas(a: argparse.Namespace) -> dict:
    from stack.config import StackConfig
    from stack.launch import down, up

    if shutil.which("h2load") is None:
        raise SystemExit("h2load not found: apt-get install nghttp2-client")
    tmp = Path(tempfile.mkdtemp(prefix="adrank-bench-scale-"))
    body = _request_body(Path(a.catalog), a.model, tmp / "req.grpc")
    rows = []
    for replicas in (1, 2):
        run_dir = tmp / f"stack{replicas}"
        state = up(StackConfig(run_dir=run_dir, replicas=replicas, port=0, repository=Path(a.repository),
                               model=a.model, triton=a.triton), say=lambda *_: None)
        try:
            reps = state.of_role("replica")
            watched = [*reps, *state.of_role("triton"), *state.of_role("balancer")]
            paths = [("direct", reps[0].target)] if replicas == 1 else []
            paths.append(("haproxy", state.target))
            for path, target in paths:
                _h2load(target, body, 2, tmp / "warm.log")  # warm-up: connections, onnxruntime arenas
                ok0 = [_ok(r.metrics_port) for r in reps]
                cpu0 = {p.name: _cpu_s(p.pid) for p in watched}
                load0, t0 = _load(), time.monotonic()
                res = _h2load(target, body, a.seconds, tmp / "h2.log")
                wall = time.monotonic() - t0
                cpu = {p.name: round(100 * (_cpu_s(p.pid) - cpu0[p.name]) / wall, 1) for p in watched}
                ok = [int(_ok(r.metrics_port) - b) for r, b in zip(reps, ok0, strict=True)]
                row = {"replicas": replicas, "path": path, **res, "ok_per_replica": ok, "cpu_pct": cpu,
                       "load_before": load0, "load_after": _load()}
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            down(run_dir, say=lambda *_: None)
    base = rows[0]["rps"]
    for row in rows:
        row["vs_direct_1"] = round(row["rps"] / base, 2)
    shutil.rmtree(tmp, ignore_errors=True)
    return {"bench": "replicas", "seconds": a.seconds, "cpus": os.cpu_count(), "triton": a.triton, "rows": rows}


def _used_memory(clients: list) -> int:
    return sum(int(c.info("memory")["used_memory"]) for c in clients)


def bench_redis_memory(a: argparse.Namespace) -> dict:
    import redis

    from embedding_cache import CODEC_NAMES, RedisWriter, bytes_per_user

    unknown = set(a.codecs.split(",")) - set(CODEC_NAMES)
    if unknown:
        raise SystemExit(f"--codecs: unknown {sorted(unknown)}; choose from {','.join(CODEC_NAMES)}")
    from embedding_cache.redis_local import LocalRedis, LocalRedisCluster

    rng = np.random.default_rng(0)
    n, length, dim = a.users, a.history_len, a.dim
    users = np.repeat(np.arange(n, dtype=np.int64) * 7 + 1, length)
    ts = np.tile(np.arange(1, length + 1, dtype=np.int64) * 60_000, n) + 1_700_000_000_000
    codes = np.tanh(rng.standard_normal((n * length, dim))).astype(np.float32)
    eids = np.arange(n * length, dtype=np.int64)
    rows = []
    for topology in ("single", "cluster"):
        server = LocalRedis() if topology == "single" else LocalRedisCluster(primaries=3, replicas=0)
        try:
            if topology == "single":
                clients = [redis.Redis.from_url(server.url)]
            else:
                clients = [server.node(p) for p in server.primary_ports()]
            for codec in a.codecs.split(","):
                for c in clients:
                    c.flushall()
                time.sleep(0.2)  # let lazy frees settle before the baseline
                before = _used_memory(clients)
                writer = RedisWriter(server.url, f"fm-mem-{codec}", dim, codec)
                writer.append_user_codes(users, ts, codes, event_ids=eids)
                writer.publish()
                per_node = [int(c.info("memory")["used_memory"]) for c in clients]
                per_user = (sum(per_node) - before) / n
                row = {"topology": topology, "codec": codec, "users": n, "history_len": length, "dim": dim,
                       "bytes_per_user": round(per_user), "gib_per_million_users": round(per_user * 1e6 / 2**30, 2),
                       "embedded_bytes_per_user": bytes_per_user(codec, dim, length),
                       "node_share": [round(m / sum(per_node), 3) for m in per_node]}
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            server.stop()
    return {"bench": "redis-memory", "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m stack.bench", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    r = sub.add_parser("replicas")
    r.add_argument("--seconds", type=int, default=10)
    r.add_argument("--repository", default="runs/demo/model_repository")
    r.add_argument("--catalog", default="runs/demo/loopfm/catalog.npz")
    r.add_argument("--model", default="vm_loopfm")
    r.add_argument("--triton", action="store_true", help="replicas infer on the bundled tritonserver")
    m = sub.add_parser("redis-memory")
    m.add_argument("--users", type=int, default=5000)
    m.add_argument("--history-len", type=int, default=64)
    m.add_argument("--dim", type=int, default=32)
    m.add_argument("--codecs", default="float32,float16,int8,int4,pq", help="comma-separated (pq trains faiss: slow)")
    for sp in (r, m):
        sp.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args(argv)
    result = bench_replicas(a) if a.what == "replicas" else bench_redis_memory(a)
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
