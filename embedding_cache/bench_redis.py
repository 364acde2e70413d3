"""Lookup latency on one redis-server vs a 3-primary Redis Cluster: `python -m embedding_cache.bench_redis`.

Starts a private redis-server and a private 3-node cluster on loopback (or uses `--single-url` / `--cluster-url`),
publishes the same synthetic snapshot to both through RedisWriter (N users x L codes, dim 32, int8; A ads), then
times, single-threaded, after a warm-up:

* `request`      `reader.lookup(user, t, L, no ads)`: the request path (one user's history; on a cluster one
                 single-slot MGET [live, user])
* `request+ads`  `reader.lookup(user, t, L, 200 ads)`: on a cluster 1 + up to `--ad-buckets` MGETs, pipelined
* `get`          one GET of one user's key through the same client: the round-trip floor of redis-py
* `batch256`     `reader.user_history(256 users)`: offline batches (a cluster pipelines one MGET per bucket)

Prints progress, a table and (with `--json FILE`) writes every figure.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import numpy as np

from embedding_cache.config import RetentionConfig
from embedding_cache.latency import latency_stats
from embedding_cache.redis_backend import RedisReader, RedisWriter
from embedding_cache.redis_client import READER, connect
from embedding_cache.redis_keys import USER_BUCKETS, BucketKeys, RedisKeys
from embedding_cache.redis_local import LocalRedis, LocalRedisCluster

T0 = 1_700_000_000_000
FM = "fm-bench"


def _fill(writer: RedisWriter, users: int, history: int, dim: int, ads: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for lo in range(0, users, 20_000):
        n = min(20_000, users - lo)
        uids = np.repeat(np.arange(lo, lo + n, dtype=np.int64), history)
        ts = T0 + np.tile(np.arange(history, dtype=np.int64) * 60_000, n)
        writer.append_user_codes(uids, ts, rng.uniform(-1, 1, (n * history, dim)).astype(np.float32))
    writer.append_ad_codes(np.arange(ads, dtype=np.int64), rng.uniform(-1, 1, (ads, dim)).astype(np.float32))


def _timed(fn: Callable[[int], object], n: int, warmup: int) -> dict[str, float]:
    for i in range(warmup):
        fn(i)
    out = np.empty(n, np.float64)
    for i in range(n):
        t = time.perf_counter_ns()
        fn(i)
        out[i] = time.perf_counter_ns() - t
    return latency_stats(out / 1000.0)


def measure(url: str, a: argparse.Namespace) -> dict:
    """Publish the synthetic snapshot to `url` and time the four operations."""
    t = time.perf_counter()
    writer = RedisWriter(url, FM, dim=a.dim, codec="int8", retention=RetentionConfig(max_per_user=a.history),
                         ad_buckets=a.ad_buckets)
    _fill(writer, a.users, a.history, a.dim, a.ads_total, a.seed)
    writer.publish(now_ms=T0 + 10**9)
    writer.close()
    load_s = time.perf_counter() - t
    reader = RedisReader(url, FM)
    rng = np.random.default_rng(a.seed + 1)
    users = rng.integers(0, a.users, a.requests + a.warmup)
    ads = np.stack([rng.choice(a.ads_total, a.ads, replace=False) for _ in range(a.requests + a.warmup)])
    batches = rng.integers(0, a.users, (50, 256))
    t_req, no_ads = T0 + a.history * 60_000 + 5_000, np.zeros(0, np.int64)
    names = BucketKeys(RedisKeys("adrank", FM), reader.snapshot_id, USER_BUCKETS, a.ad_buckets)
    user_keys = [names.user(int(u)) for u in users]  # the exact key a request reads
    client = connect(url, READER)
    out = {
        "load_s": load_s,
        "request": _timed(lambda i: reader.lookup(int(users[i]), t_req, a.history, no_ads), a.requests, a.warmup),
        "request+ads": _timed(lambda i: reader.lookup(int(users[i]), t_req, a.history, ads[i]), a.requests,
                              a.warmup),
        "get": _timed(lambda i: client.get(user_keys[i]), a.requests, a.warmup),
        "batch256": _timed(lambda i: reader.user_history(batches[i % 50], t_req, a.history), 200, 20),
    }
    reader.close()
    client.close()
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m embedding_cache.bench_redis", description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--history", type=int, default=64, help="codes per user (L)")
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--ads", type=int, default=200, help="candidate ads per request (request+ads)")
    p.add_argument("--ads-total", type=int, default=10_000, help="ads in the store")
    p.add_argument("--ad-buckets", type=int, default=16, help="hash-tagged ad buckets (power of two)")
    p.add_argument("--requests", type=int, default=3_000)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--single-url", default=None, help="use this redis:// instead of starting a redis-server")
    p.add_argument("--cluster-url", default=None, help="use this redis+cluster:// instead of starting 3 nodes")
    p.add_argument("--json", default=None, help="write the figures to this file")
    return p


def main(argv: list[str] | None = None) -> dict:
    a = _parser().parse_args(argv)
    results: dict[str, dict] = {}
    for name, given in (("single", a.single_url), ("cluster", a.cluster_url)):
        print(f"[{name}] starting {'from ' + given if given else 'a private server'}; "
              f"loading {a.users:,} users x {a.history} codes + {a.ads_total:,} ads", flush=True)
        if given:
            results[name] = measure(given, a)
        elif name == "single":
            with LocalRedis() as server:
                results[name] = measure(server.url, a)
        else:
            with LocalRedisCluster(primaries=3, replicas=0) as cluster:
                results[name] = measure(cluster.url, a)
        print(f"[{name}] loaded in {results[name]['load_s']:.1f} s, timed {a.requests:,} requests", flush=True)
    print(f"\n{'operation':<12} {'single p50/p99 us':>20} {'cluster p50/p99 us':>20}")
    for op in ("request", "request+ads", "get", "batch256"):
        s, c = results["single"][op], results["cluster"][op]
        print(f"{op:<12} {s['p50_us']:>9.0f} / {s['p99_us']:<8.0f} {c['p50_us']:>9.0f} / {c['p99_us']:<8.0f}")
    report = {"args": vars(a), **results}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=2)
    return report


if __name__ == "__main__":
    main()
