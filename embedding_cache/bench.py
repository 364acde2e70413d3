"""Benchmark of the embedding cache: `adrank bench cache [--json FILE] [--users N] [--history L]`.

Builds N users x L codes (dim 32, int8 by default) through the public writer, then measures in one run:
one request's lookups (1 user + 200 ads) p50/p99 on the embedded store; a plain numpy gather of the same
bytes from in-memory arrays (the limit) and the ratio to it; batched throughput; the same request on
Redis (a smaller user count, since 1M x 64 packed values cost GBs of Redis memory and minutes to load);
bytes per 1M users; and each codec's size and reconstruction error.

User and ad ids are 0..N-1 by default (`--ids dense`); `--ids sparse` spreads them over ~2**40 (like
hashed ids), so the cache must search for them. The numpy baseline gathers by row number either way.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from embedding_cache.config import RetentionConfig
from embedding_cache.embedded import EmbeddedWriter, open_snapshot, version_dir
from embedding_cache.latency import latency_stats
from embedding_cache.reader import CacheReader
from embedding_cache.report import codec_report

T0 = 1_700_000_000_000
FM = "fm-bench"


def _id_map(n: int, ids: str, seed: int) -> np.ndarray:
    """Id of the i-th user or ad: i itself ("dense") or sorted unique ids about 2**20 apart ("sparse")."""
    if ids == "dense":
        return np.arange(n, dtype=np.int64)
    return (np.arange(n, dtype=np.int64) << 20) | np.random.default_rng(seed + 1).integers(0, 1 << 20, n)


def _fill(writer, users: int, history: int, dim: int, n_ads: int, seed: int, chunk: int = 50_000,
          ids: str = "dense") -> None:
    """Vectorized synthetic codes: tanh-bounded uniform values, one per minute per user, users in chunks."""
    rng = np.random.default_rng(seed)
    user_map, ad_map = _id_map(users, ids, seed), _id_map(n_ads, ids, seed + 7)
    for lo in range(0, users, chunk):
        n = min(chunk, users - lo)
        uids = np.repeat(user_map[lo:lo + n], history)
        ts = T0 + np.tile(np.arange(history, dtype=np.int64) * 60_000, n) + rng.integers(0, 1000, n * history)
        ts = np.sort(ts.reshape(n, history), axis=1).ravel()
        writer.append_user_codes(uids, ts, rng.uniform(-1, 1, (n * history, dim)).astype(np.float32))
    writer.append_ad_codes(ad_map, rng.uniform(-1, 1, (n_ads, dim)).astype(np.float32))


def _timed(fn: Callable[[int], object], n: int) -> np.ndarray:
    out = np.empty(n, np.float64)
    for i in range(n):
        t = time.perf_counter_ns()
        fn(i)
        out[i] = time.perf_counter_ns() - t
    return out / 1000.0  # microseconds


def _stats(us: np.ndarray) -> dict[str, float]:
    return {**latency_stats(us), "requests_per_s": float(1e6 / us.mean())}


def _requests(rng: np.random.Generator, users: int, n_ads: int, n_req: int, ads_per_req: int):
    ads = np.stack([rng.choice(n_ads, ads_per_req, replace=False) for _ in range(n_req)])
    return rng.integers(0, users, n_req), ads


def _measure_reader(reader: CacheReader, users: int, history: int, n_ads: int, n_req: int, ads: int,
                    seed: int, ids: str = "dense") -> dict[str, float]:
    rng = np.random.default_rng(seed)
    user_pos, ad_pos = _requests(rng, users, n_ads, n_req, ads)
    uids, ad_ids = _id_map(users, ids, seed)[user_pos], _id_map(n_ads, ids, seed + 7)[ad_pos]
    t_req = T0 + history * 60_000 + 5_000
    for i in range(min(200, n_req)):  # warm caches and code paths
        reader.lookup(int(uids[i]), t_req, history, ad_ids[i])
    return _stats(_timed(lambda i: reader.lookup(int(uids[i]), t_req, history, ad_ids[i]), n_req))


def _embedded(root: Path, a: argparse.Namespace) -> dict:
    from embedding_cache import open_reader

    t = time.perf_counter()
    w = EmbeddedWriter(root, FM, dim=a.dim, codec=a.codec, retention=RetentionConfig(max_per_user=a.history))
    _fill(w, a.users, a.history, a.dim, a.ads_total, a.seed, ids=a.ids)
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    w.publish(now_ms=T0 + 10**9)
    publish_s = time.perf_counter() - t
    del w
    t = time.perf_counter()
    reader = open_reader("embedded", root, FM)
    open_ms = (time.perf_counter() - t) * 1000
    one = _measure_reader(reader, a.users, a.history, a.ads_total, a.requests, a.ads, a.seed, a.ids)

    # The limit: gather the same rows (codes + scales) from in-memory arrays with precomputed indices.
    snap = open_snapshot(root, FM)
    rng = np.random.default_rng(a.seed)
    uids, ad_ids = _requests(rng, a.users, a.ads_total, a.requests, a.ads)
    rows = snap.offsets[uids][:, None] + np.arange(a.history)[None, :]
    mem_codes, mem_scales = np.array(snap.codes), np.array(snap.scales)
    mem_ad_codes, mem_ad_scales = np.array(snap.ad_codes), np.array(snap.ad_scales)

    def raw_gather(i: int) -> tuple[np.ndarray, ...]:
        return mem_codes[rows[i]], mem_scales[rows[i]], mem_ad_codes[ad_ids[i]], mem_ad_scales[ad_ids[i]]

    def gather_dequant(i: int) -> tuple[np.ndarray, np.ndarray]:
        u = mem_codes[rows[i]].view(np.int8).astype(np.float32) * mem_scales[rows[i]][:, None]
        v = mem_ad_codes[ad_ids[i]].view(np.int8).astype(np.float32) * mem_ad_scales[ad_ids[i]][:, None]
        return u, v

    raw = _stats(_timed(raw_gather, a.requests))
    deq = _stats(_timed(gather_dequant, a.requests)) if a.codec == "int8" else None

    batch_users = _id_map(a.users, a.ids, a.seed)[rng.integers(0, a.users, (20, 256))]
    t_req = T0 + a.history * 60_000 + 5_000
    reader.user_history(batch_users[0], t_req, a.history)
    tb = time.perf_counter()
    for b in batch_users:
        reader.user_history(b, t_req, a.history)
    batch_users_per_s = batch_users.size / (time.perf_counter() - tb)

    disk = sum(f.stat().st_size for f in (version_dir(root, FM) / "snapshots").rglob("*.bin"))
    return {
        "users": a.users, "history": a.history, "codec": a.codec, "ids": a.ids, "rows": int(snap.n_rows),
        "lookup_path": getattr(reader, "lookup_path", "numpy"),
        "build_s": build_s, "publish_s": publish_s, "open_ms": open_ms, "lookup": one,
        "numpy_gather": raw, "numpy_gather_dequant": deq,
        "ratio_p50_vs_gather": one["p50_us"] / raw["p50_us"],
        "ratio_p50_vs_gather_dequant": one["p50_us"] / deq["p50_us"] if deq else None,
        "batch256_users_per_s": batch_users_per_s,
        "bytes_total": int(disk), "bytes_per_1m_users": int(disk / a.users * 1_000_000),
    }


def _redis(a: argparse.Namespace) -> dict | None:
    import redis

    from embedding_cache import RedisWriter, open_reader

    proc = None
    url = a.redis_url
    if url is None:
        exe = shutil.which("redis-server")
        if exe is None:
            return None
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{port}/0"
        for _ in range(100):
            try:
                redis.Redis.from_url(url).ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.05)
    try:
        client = redis.Redis.from_url(url)
        before = int(client.info("memory")["used_memory"])
        t = time.perf_counter()
        w = RedisWriter(url, FM, dim=a.dim, codec=a.codec, retention=RetentionConfig(max_per_user=a.history))
        _fill(w, a.redis_users, a.history, a.dim, a.ads_total, a.seed, ids=a.ids)
        w.publish(now_ms=T0 + 10**9)
        load_s = time.perf_counter() - t
        used = int(client.info("memory")["used_memory"]) - before
        reader = open_reader("redis", url, FM)
        one = _measure_reader(reader, a.redis_users, a.history, a.ads_total, a.requests, a.ads, a.seed, a.ids)
        return {"users": a.redis_users, "load_s": load_s, "lookup": one, "redis_used_memory_bytes": used,
                "bytes_per_1m_users": int(used / a.redis_users * 1_000_000), "url_given": a.redis_url is not None}
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adrank bench cache", description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=1_000_000)
    p.add_argument("--history", type=int, default=64, help="codes per user (L)")
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--codec", default="int8")
    p.add_argument("--ads", type=int, default=200, help="candidate ads per request")
    p.add_argument("--ads-total", type=int, default=100_000, help="ads in the store")
    p.add_argument("--requests", type=int, default=5_000)
    p.add_argument("--ids", choices=("dense", "sparse"), default="dense",
                   help="user/ad ids 0..N-1, or spread over ~2**40 like hashed ids")
    p.add_argument("--redis-url", default=None, help="use this Redis instead of starting a redis-server")
    p.add_argument("--redis-users", type=int, default=20_000, help="users loaded into Redis (0 skips Redis)")
    p.add_argument("--root", default=None, help="directory for the embedded store (default: a temp dir)")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--seed", type=int, default=0)
    return p


def _print(results: dict) -> None:
    e = results["embedded"]
    lines = [
        f"embedded  {e['users']:>9,} users x L={e['history']} ({e['codec']}, {e['ids']} ids, "
        f"{e['lookup_path']} lookup): "
        f"p50 {e['lookup']['p50_us']:.1f} us  p99 {e['lookup']['p99_us']:.1f} us  "
        f"{e['lookup']['requests_per_s']:,.0f} req/s",
        f"numpy gather (same bytes):      p50 {e['numpy_gather']['p50_us']:.1f} us  "
        f"-> ratio {e['ratio_p50_vs_gather']:.1f}x",
    ]
    if e["numpy_gather_dequant"]:
        lines.append(f"numpy gather+dequantize:        p50 {e['numpy_gather_dequant']['p50_us']:.1f} us  "
                     f"-> ratio {e['ratio_p50_vs_gather_dequant']:.1f}x")
    lines.append(f"batched user_history (B=256):   {e['batch256_users_per_s']:,.0f} users/s")
    lines.append(f"embedded bytes per 1M users:    {e['bytes_per_1m_users'] / 2**30:.2f} GiB  "
                 f"(build {e['build_s']:.1f} s, publish {e['publish_s']:.1f} s, open {e['open_ms']:.1f} ms)")
    r = results.get("redis")
    if r:
        lines.append(f"redis     {r['users']:>9,} users: p50 {r['lookup']['p50_us']:.1f} us  "
                     f"p99 {r['lookup']['p99_us']:.1f} us; {r['bytes_per_1m_users'] / 2**30:.2f} GiB per 1M users")
    for c in results["codecs"]:
        lines.append(f"codec {c['codec']:>7}: {c['bytes_per_user']:>6} B/user at L={e['history']}  "
                     f"rmse {c['rmse']:.4f}  max|err| {c['max_abs_error']:.4f}")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0 when the p99 <= 1 ms target holds, 1 otherwise."""
    a = _parser().parse_args(argv)
    root = Path(a.root) if a.root else Path(tempfile.mkdtemp(prefix="adrank-cache-bench-"))
    try:
        results: dict = {"command": "adrank bench cache " + " ".join(argv or []), "cpus": os.cpu_count()}
        print(f"building {a.users:,} users x {a.history} codes ...", flush=True)
        results["embedded"] = _embedded(root, a)
        if a.redis_users > 0:
            print(f"loading {a.redis_users:,} users into redis ...", flush=True)
            results["redis"] = _redis(a)
        sample = np.tanh(np.random.default_rng(a.seed).standard_normal((20_000, a.dim))).astype(np.float32)
        results["codecs"] = [c.as_dict() for c in codec_report(sample, a.history)]
    finally:
        if not a.root:
            shutil.rmtree(root, ignore_errors=True)
    _print(results)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return 0 if results["embedded"]["lookup"]["p99_us"] <= 1000 else 1


if __name__ == "__main__":
    raise SystemExit(main())
