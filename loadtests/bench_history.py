"""The history lookup as the serving path calls it, against numpy gathers of the same bytes, in one run.

`HistoryProvider.inputs` is what a LoopFM request pays for FM history, awaited as the pipeline's history
stage awaits it: on the embedded store, one compiled call (`embedding_cache.served_history.HistoryLookup`:
rows strictly before t decoded into the model's input, the cold-start prior, the hit/staleness counters)
and the model tensors (`models.history.request_tensors`: the codes, a mask row, the user index). The
baselines read the same user rows from in-memory arrays with precomputed row numbers: the raw bytes (the
floor any store pays to touch the data), and the bytes decoded to float32 (the least work that yields
what the model consumes).

On the compiled path it also times each layer under the served stage, so the gap to the gather is
accounted for: the served-history lookup (argument checks, output array, compiled call), the compiled
call alone on a preallocated output, a compiled function that does nothing, called with the same
arguments (numba's dispatch floor), and, for comparison, the generic one-request API `reader.lookup`
(HistoryBatch, timestamps, ad codes), which serving no longer calls on an in-process store.

    python -m loadtests.bench_history --users 200000 --history 32 --codec int4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from embedding_cache import EmbeddedWriter, RetentionConfig
from embedding_cache.embedded import open_snapshot
from embedding_cache.latency import latency_stats
from exporters.manifest import ModelManifest, TensorSpec
from models.features import FeatureSpec
from models.history import FM_HISTORY
from serving.backends.base import ModelHandle
from serving.history import HistoryProvider

FM = "fm-bench-served"
T0 = 1_700_000_000_000
CANDIDATES = 200


def _store(root: Path, users: int, history: int, dim: int, codec: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = EmbeddedWriter(root, FM, dim=dim, codec=codec, retention=RetentionConfig(max_per_user=history, max_age_ms=None))
    for start in range(0, users, 50_000):
        ids = np.arange(start, min(users, start + 50_000), dtype=np.int64)
        uid = np.repeat(ids, history)
        ts = T0 + np.tile(np.arange(history, dtype=np.int64) * 60_000, len(ids))
        w.append_user_codes(uid, ts, np.tanh(rng.normal(0, 0.6, (len(uid), dim))).astype(np.float32))
    w.publish(now_ms=T0 + 10**9)


def _handle(history: int, dim: int, codec: str) -> ModelHandle:
    manifest = ModelManifest(name="bench", version=1, fm_version=FM, feature_spec={},
                             inputs=(TensorSpec(FM_HISTORY, "float32", ("users", history, dim)),), outputs=(),
                             history={"fm_version": FM, "length": history, "width": dim, "codec": codec})
    return ModelHandle("bench", 1, manifest, FeatureSpec((1,) * 8))


def _timed(fn, n: int) -> np.ndarray:
    out = np.empty(n)
    for i in range(n):
        t = time.perf_counter_ns()
        fn(i)
        out[i] = time.perf_counter_ns() - t
    return out / 1000.0


async def _timed_async(fn, n: int) -> np.ndarray:
    out = np.empty(n)
    for i in range(n):
        t = time.perf_counter_ns()
        await fn(i)
        out[i] = time.perf_counter_ns() - t
    return out / 1000.0


def measure(*, users: int = 200_000, history: int = 32, dim: int = 32, codec: str = "int4", requests: int = 3_000,
            seed: int = 0, rounds: int = 3) -> dict:
    """p50/p99 of the served history stage and of the numpy baselines, interleaved over `rounds` rounds so
    drift on a shared machine hits both alike; ratios of the medians over all samples."""
    with tempfile.TemporaryDirectory(prefix="adrank-bench-history-") as tmp:
        root = Path(tmp)
        _store(root, users, history, dim, codec, seed)
        provider = HistoryProvider("embedded", str(root))
        handle = _handle(history, dim, codec)
        provider.check(handle)
        reader = provider.reader(FM)
        snap = open_snapshot(root, FM)
        rng = np.random.default_rng(seed + 1)
        uids = rng.integers(0, users, requests)
        t_req = T0 + history * 60_000 + 5_000
        rows = snap.offsets[uids][:, None] + np.arange(history)[None, :]
        codes, scales = np.array(snap.codes), np.array(snap.scales)
        decode = snap.codec.decode

        async def served(i: int):
            return await provider.inputs(handle, int(uids[i]), t_req, CANDIDATES)

        def gather(i: int):
            r = rows[i]
            return codes[r], scales[r] if len(scales) else scales

        def gather_decode(i: int):
            r = rows[i]
            return decode(codes[r], scales[r] if len(scales) else scales)

        asyncio.run(_timed_async(served, min(300, requests)))  # warm code paths and pages (and bind)
        sync = {"gather": gather, "gather_decode": gather_decode,
                **_layers(provider, handle, reader, uids, t_req, history, dim)}
        samples: dict[str, list[np.ndarray]] = {"served": [], **{k: [] for k in sync}}
        for fn in sync.values():
            for i in range(min(300, requests)):
                fn(i)
        for _ in range(rounds):
            samples["served"].append(asyncio.run(_timed_async(served, requests)))
            for key, fn in sync.items():
                samples[key].append(_timed(fn, requests))
        stats = {k: latency_stats(np.concatenate(v)) for k, v in samples.items()}
        path = getattr(reader, "lookup_path", "numpy")
    gather_p50 = stats["gather"]["p50_us"]
    return {"users": users, "history": history, "dim": dim, "codec": codec, "requests": requests, "rounds": rounds,
            "lookup_path": path, **stats,
            "ratio_p50_vs_gather": stats["served"]["p50_us"] / gather_p50,
            "ratio_p50_vs_gather_decode": stats["served"]["p50_us"] / stats["gather_decode"]["p50_us"],
            "layers_ratio_p50_vs_gather": {k: stats[k]["p50_us"] / gather_p50 for k in LAYERS if k in stats}}


LAYERS = ("history_lookup", "kernel_call", "dispatch_floor", "reader_lookup")
"""Layers timed on the compiled path: the served-history lookup the stage calls (HistoryLookup), its
compiled call alone on a preallocated output, a compiled no-op called with the same arguments (numba's
dispatch floor), and, for comparison, the generic one-request API (`reader.lookup`), which serving does
not call on an in-process store."""
LAYER_NAMES = {
    "history_lookup": "HistoryLookup.fetch: argument checks, output array, compiled call",
    "kernel_call": "the compiled call on a preallocated output",
    "dispatch_floor": "a compiled no-op with the same arguments",
    "reader_lookup": "reader.lookup, the generic one-request API, not on the served path",
}


def _layers(provider: HistoryProvider, handle: ModelHandle, reader, uids: np.ndarray, t_req: int,
            history: int, dim: int) -> dict:
    """Timed callables for each layer under the served stage (compiled path only; {} on the numpy path)."""
    fast = provider._fast.get(id(handle))
    if fast is None:
        return {}
    import numba

    lookup = fast[1]
    _, run, address, _ = lookup.__self__._bound
    ads = np.zeros(0, np.int64)
    out = np.zeros((1, history, dim), np.float32)

    @numba.njit
    def nothing(address, user_id, t, out):  # noqa: ARG001 - the served kernel's signature
        return 0

    def history_lookup(i: int):
        return lookup(int(uids[i]), t_req)

    def kernel_call(i: int):
        return run(address, int(uids[i]), t_req, out)

    def dispatch_floor(i: int):
        return nothing(address, int(uids[i]), t_req, out)

    def reader_lookup(i: int):
        return reader.lookup(int(uids[i]), t_req, history, ads)

    return {"history_lookup": history_lookup, "kernel_call": kernel_call, "dispatch_floor": dispatch_floor,
            "reader_lookup": reader_lookup}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_history", description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=200_000)
    p.add_argument("--history", type=int, default=32)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--codec", default="int4")
    p.add_argument("--requests", type=int, default=3_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    r = measure(users=a.users, history=a.history, dim=a.dim, codec=a.codec, requests=a.requests, rounds=a.rounds)
    print(f"served history stage ({r['users']:,} users, L={r['history']}, d={r['dim']}, {r['codec']}, "
          f"{r['lookup_path']} lookup): p50 {r['served']['p50_us']:.2f} µs  p99 {r['served']['p99_us']:.1f} µs")
    print(f"numpy gather of the same bytes:  p50 {r['gather']['p50_us']:.2f} µs → ratio "
          f"{r['ratio_p50_vs_gather']:.2f}× (target ≤ 1.5×)")
    print(f"numpy gather + decode:           p50 {r['gather_decode']['p50_us']:.1f} µs → ratio "
          f"{r['ratio_p50_vs_gather_decode']:.2f}×")
    for key, ratio in r["layers_ratio_p50_vs_gather"].items():
        print(f"  layer {key:<15} p50 {r[key]['p50_us']:.2f} µs → ratio {ratio:.2f}×  ({LAYER_NAMES[key]})")
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
