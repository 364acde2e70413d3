"""What an idle gap between calls costs: raw onnxruntime and the in-process pipeline (embedded backend, a
ScoreColumns request, no gRPC) called back to back, with a sleep between calls, and with the same gap
spent spinning. A server answering sequential requests sleeps between them; if the sleep alone makes the
next call slower, part of the server's time over raw onnxruntime is the idle core, not the server's code
— and keeping the core busy (`adrank serve --busy-poll-us`) is what removes it.

    python -m loadtests.bench_idle --run runs/demo [--calls 1000] [--gaps-ms 0.5,2] [--repeats 3]

Prints one line per (repeat, gap, way of waiting): p50 µs of each, and the ratio to back-to-back calls
in the same repeat; `--json F` writes them too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

WARMUP = 30


def sleep_gap(seconds: float) -> None:
    time.sleep(seconds)


def spin_gap(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def timed_p50(call: Callable[[], float | None], n: int, gap_s: float, wait: Callable[[float], None]) -> float:
    """p50 µs of `call` over n calls after WARMUP, each preceded by `wait(gap_s)` when gap_s > 0. `call`
    may return its own duration in µs (the pipeline's timer); otherwise it is timed here."""
    out = []
    for _ in range(n + WARMUP):
        if gap_s > 0:
            wait(gap_s)
        t = time.perf_counter()
        own = call()
        out.append(own if own is not None else (time.perf_counter() - t) * 1e6)
    return float(np.median(out[WARMUP:]))


def measure(run_dir: Path, n: int, gaps_s: list[float], repeats: int) -> list[dict]:
    from loadtests import bench_serve
    from loadtests.bench_fastpath import captured, in_process_pipeline
    from serving.client import to_columns
    from serving.pipeline import RequestContext
    from serving.pipeline.decode_columns import ColumnsPayload

    request = bench_serve._request(run_dir)
    cap = captured(run_dir, request)
    session, tensors = cap["session"], cap["tensors"]
    _, pipeline = in_process_pipeline(run_dir)
    payload = ColumnsPayload(to_columns(request).SerializeToString())
    loop = asyncio.new_event_loop()

    def ort() -> None:
        session.run(["p_ctr", "p_cvr"], tensors)

    def pipe() -> float:
        ctx = RequestContext.begin(None, max_s=1.0)
        return float(loop.run_until_complete(pipeline.run(payload, ctx)).timing.total_us)

    rows = []
    try:
        for rep in range(repeats):
            base = {"ort": timed_p50(ort, n, 0, sleep_gap), "pipeline": timed_p50(pipe, n, 0, sleep_gap)}
            rows.append({"repeat": rep, "gap_ms": 0.0, "wait": "none", "ort_us": base["ort"],
                         "pipeline_us": base["pipeline"], "ort_ratio": 1.0, "pipeline_ratio": 1.0,
                         "load": os.getloadavg()[0]})
            for gap in gaps_s:
                for name, wait in (("sleep", sleep_gap), ("spin", spin_gap)):
                    o, p = timed_p50(ort, n, gap, wait), timed_p50(pipe, n, gap, wait)
                    rows.append({"repeat": rep, "gap_ms": gap * 1e3, "wait": name, "ort_us": o, "pipeline_us": p,
                                 "ort_ratio": o / base["ort"], "pipeline_ratio": p / base["pipeline"],
                                 "load": os.getloadavg()[0]})
    finally:
        loop.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_idle", description=__doc__.splitlines()[0])
    p.add_argument("--run", default="runs/demo", help="folder with model_repository/ and catalog.npz")
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--gaps-ms", default="0.5,2", help="idle gaps between calls, ms, comma-separated")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default="")
    a = p.parse_args(argv)
    run_dir = Path(a.run)
    if not (run_dir / "model_repository").is_dir():
        print(f"error: --run: {run_dir}/model_repository not found (make demo writes runs/demo)", file=sys.stderr)
        return 2
    gaps = [float(g) / 1e3 for g in a.gaps_ms.split(",") if g.strip()]
    rows = measure(run_dir, a.calls, gaps, a.repeats)
    print(f"{'rep':>3} {'gap ms':>6} {'wait':>5} {'ort µs':>7} {'× b2b':>6} {'pipeline µs':>11} {'× b2b':>6} load")
    for r in rows:
        print(f"{r['repeat']:>3} {r['gap_ms']:>6g} {r['wait']:>5} {r['ort_us']:>7.1f} {r['ort_ratio']:>6.2f} "
              f"{r['pipeline_us']:>11.1f} {r['pipeline_ratio']:>6.2f} {r['load']:.2f}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
