"""The request-log sink under overload: scoring latency with logging on and off, in the same run.

Two servers of the same model run side by side, one with `--request-log` and a small queue (so the
writer cannot keep up and records are dropped, which is the overload case), one without. The same
requests are sent to each in alternating blocks (off, on, off, on, …) by one grpc.aio client at a
fixed concurrency, so drift of a shared machine lands on both. Reported per server: the client's p50
/ p99 and the server's own `timing.total_us` p50 / p99, the on/off ratio of each p99, and the sink's
drop counters scraped from /metrics once its queue is empty and the rows in its files once it has
stopped: every request sent is either written or dropped (`written + dropped == sent`). Besides the
pooled p99, the median of the per-block p99 ratios (block b of each server, run back to back) is
reported, which a burst of unrelated load in one block sways less.

    python -m loadtests.bench_requestlog --repository runs/demo/model_repository --cache-dir runs/demo/cache \\
        --model vm_loopfm --catalog runs/demo/catalog.npz [--writer process|thread] [--json out.json]

It ends with a verdict line: PASS when the server's own pooled p99 with logging on is within 10 % of
the one with logging off. Beside it, a figure a shared machine blurs far less: the CPU time of the
serving process's request-log thread per record and its stretches between lock releases (`--writer
process` gives the writer process's, whose feeder only frames records).

Figures from a shared machine are noisy: the report carries `os.getloadavg()` before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class BenchConfig:
    repository: str
    cache_dir: str
    model: str
    catalog: str
    requests_per_block: int = 300
    blocks: int = 10
    concurrency: int = 8
    n_candidates: int = 50
    queue: int = 16  # small: the writer wakes every 50 ms, so a few hundred requests/s overflow it
    transfer_sample: float = 0.0  # the sink alone; the transfer sample is another inference per sampled request
    warmup: int = 200
    seed: int = 0
    writer: str = "thread"  # the logging server's --request-log-writer (the server's default); or "process"
    max_ratio: float = 1.10  # the acceptance bound on the server's own p99, logging on / off
    aa: bool = False  # the control: the second server runs without logging too (an A/A of the same comparison)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metric(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.MULTILINE))


def _requests(config: BenchConfig, n: int) -> list:
    from models.catalog import load_catalog
    from serving.client import build_request

    catalog = load_catalog(config.catalog)
    rng = np.random.default_rng(config.seed)
    users = np.asarray(catalog["user_id"])
    t = int(np.asarray(catalog["max_ts_ms"]).reshape(-1)[0]) + 1
    return [build_request(int(rng.choice(users)), config.n_candidates, catalog, rng=rng, request_time_ms=t,
                          request_id=f"bench-{i}") for i in range(n)]


async def _block(target: str, requests: list, concurrency: int) -> tuple[np.ndarray, np.ndarray]:
    """(client µs, server total_us) per request, `concurrency` calls in flight."""
    import grpc

    from protos.adrank.v1 import ranking_pb2_grpc

    client, server = np.zeros(len(requests)), np.zeros(len(requests))
    async with grpc.aio.insecure_channel(target) as channel:
        stub = ranking_pb2_grpc.AdRankingStub(channel)
        queue = iter(range(len(requests)))

        async def worker() -> None:
            for i in queue:
                t0 = time.perf_counter()
                response = await stub.Score(requests[i], timeout=30)
                client[i] = (time.perf_counter() - t0) * 1e6
                server[i] = response.timing.total_us

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return client, server


def _pct(us: np.ndarray) -> dict[str, float]:
    return {"p50_us": float(np.percentile(us, 50)), "p99_us": float(np.percentile(us, 99)), "n": int(len(us))}


def run_bench(config: BenchConfig, log_dir: str | Path) -> dict:
    """Runs the comparison (module docstring); `log_dir` receives the logging server's files."""
    from serving.process import ServerProcess

    base = ["--repository", config.repository, "--model", config.model, "--cache-dir", config.cache_dir,
            "--drain-delay-s", "0"]
    on_metrics = _free_port()
    on_args = [*base, "--metrics-port", str(on_metrics)]
    if not config.aa:
        on_args += ["--request-log", str(log_dir), "--request-log-queue", str(config.queue),
                    "--transfer-sample", str(config.transfer_sample), "--request-log-writer", config.writer]
    requests = _requests(config, config.warmup + config.requests_per_block)
    load_before = os.getloadavg()
    lat: dict[str, dict[str, list]] = {"off": {"client": [], "server": []}, "on": {"client": [], "server": []}}
    with ServerProcess(base) as off, ServerProcess(on_args) as on:
        targets = {"off": off.target, "on": on.target}
        for target in targets.values():
            asyncio.run(_block(target, requests[:config.warmup], config.concurrency))
        body = requests[config.warmup:]
        for b in range(config.blocks):
            for name in (("off", "on") if b % 2 == 0 else ("on", "off")):
                client, server = asyncio.run(_block(targets[name], body, config.concurrency))
                lat[name]["client"].append(client)
                lat[name]["server"].append(server)
        deadline, text = time.monotonic() + 10, ""
        while not config.aa:  # the queue empties within a writer pass or two once traffic stops
            text = urllib.request.urlopen(f"http://127.0.0.1:{on_metrics}/metrics", timeout=5).read().decode()
            if _metric(text, "adrank_requestlog_queue_depth") == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    load_after = os.getloadavg()
    report: dict = {"config": asdict(config), "load_before": load_before, "load_after": load_after}
    if not config.aa:
        report.update(_sink_figures(config, log_dir, text))
    for name in ("off", "on"):
        report[name] = {k: _pct(np.concatenate(v)) for k, v in lat[name].items()}
    report["p99_ratio_client"] = report["on"]["client"]["p99_us"] / report["off"]["client"]["p99_us"]
    report["p99_ratio_server"] = report["on"]["server"]["p99_us"] / report["off"]["server"]["p99_us"]
    # block b of one server ran next to block b of the other: the median of those paired ratios is less
    # swayed than the pooled p99 by a burst of other work on a shared machine landing in one block
    for side in ("client", "server"):
        pairs = [float(np.percentile(on, 99) / np.percentile(off, 99))
                 for on, off in zip(lat["on"][side], lat["off"][side], strict=True)]
        report[f"block_p99_ratios_{side}"] = pairs
        report[f"median_block_p99_ratio_{side}"] = float(np.median(pairs))
    report["within_bound"] = report["p99_ratio_server"] <= config.max_ratio
    return report


def _sink_figures(config: BenchConfig, log_dir: str | Path, text: str) -> dict:
    """The logging server's accounting and its request-log thread's CPU figures, from its /metrics `text`."""
    from models.data.requestlog import read_request_log

    written = read_request_log(log_dir, columns=["request_id"]).num_rows  # the server published them on stop
    sent = config.warmup + config.blocks * config.requests_per_block
    from serving.requestlog import DROP_REASONS

    dropped = {reason: _metric(text, rf'adrank_requestlog_records_dropped_total{{reason="{reason}"}}')
               for reason in DROP_REASONS}
    # the interpreter-lock time the log cost the serving process: CPU time of its request-log thread (the
    # feeder that frames records for the writer process, or the in-process writer), which a busy machine
    # does not inflate the way it inflates p99 (CPU time counts only while the thread runs)
    handed = sent - dropped["queue_full"]
    feeder_cpu_s = _metric(text, "adrank_requestlog_feeder_cpu_seconds_total")
    return {"sent_to_logging_server": sent,
            "written": written, "dropped": dropped,
            "feeder_cpu_us_per_record": feeder_cpu_s * 1e6 / max(1, handed),
            "feeder_max_slice_us": _metric(text, "adrank_requestlog_feeder_max_slice_seconds") * 1e6,
            # thread writer: its Parquet writes and publishes, which release the lock inside (absent
            # from older trees, whose slices included them)
            "writer_native_cpu_us_per_record":
                _metric(text, "adrank_requestlog_writer_native_cpu_seconds_total") * 1e6 / max(1, handed),
            "writer_native_max_us": _metric(text, "adrank_requestlog_writer_native_max_seconds") * 1e6,
            "writer_gate_waits": _metric(text, "adrank_requestlog_writer_gate_waits_total"),
            "writer_gate_timeouts": _metric(text, "adrank_requestlog_writer_gate_timeouts_total"),
            "feeder_slices": _metric(text, "adrank_requestlog_feeder_slice_seconds_count"),
            "feeder_slices_over": {
                f"{le * 1e6:.0f}us": _metric(text, "adrank_requestlog_feeder_slice_seconds_count")
                - _metric(text, rf'adrank_requestlog_feeder_slice_seconds_bucket{{le="{le}"}}')
                for le in (0.0001, 0.001)}}


def _probe_records(n_records: int, n_candidates: int, seed: int) -> list:
    """Records shaped as the serving path builds them (numpy arrays of the schema's dtypes, 8 stages)."""
    from models.data.requestlog import RequestRecord

    rng = np.random.default_rng(seed)
    stages = ("decode", "validate", "route", "history", "features", "infer", "rank", "encode")
    out = []
    for i in range(n_records):
        n = n_candidates
        p_ctr = rng.random(n, dtype=np.float32)
        out.append(RequestRecord(
            request_id=f"probe-{i}", request_time_ms=1_700_000_000_000 + i, user_id=int(rng.integers(1, 10**6)),
            placement=1, device=2, hour=int(i % 24), user_segment=3,
            recent_categories=rng.integers(0, 50, 5).astype(np.int32), ad_id=rng.integers(0, 10**6, n),
            advertiser_id=rng.integers(0, 10**4, n), campaign_id=rng.integers(0, 10**5, n),
            category=rng.integers(0, 50, n).astype(np.int32), bid=rng.random(n), p_ctr=p_ctr,
            p_cvr=rng.random(n, dtype=np.float32), expected_value=rng.random(n),
            order=np.argsort(-p_ctr)[:10].astype(np.int32), model_name="vm_loopfm", model_version=1,
            rollout_arm="live", backend="embedded", fm_version="fm-1", snapshot_id="s000001",
            flags=["FLAG_USER_HISTORY_MISSING"] if i % 7 == 0 else [],
            stage_us={s: int(rng.integers(5, 400)) for s in stages}))
    return out


def gil_probe(*, seconds: float = 20.0, offers_per_tick: int = 2, tick_s: float = 0.001, queue: int = 16,
              n_candidates: int = 50, writer: str = "thread", row_group_rows: int = 1024, seed: int = 0) -> dict:
    """How long a thread that wants the interpreter lock waits behind the request log's writer.

    The calling thread plays the event loop: it sleeps `tick_s`, offers `offers_per_tick` records (into a
    `queue`-record queue, as the overloaded server does) and measures how late it woke. The same loop
    runs first without a sink (the baseline, same process); the difference is what the writer costs a
    thread of the serving process. Uses only the sink's public API, so the same function measures an
    older tree (`PYTHONPATH=OLD python loadtests/bench_requestlog.py --gil-probe`)."""
    from serving.requestlog import RequestLogSink, SinkConfig

    pool = _probe_records(512, n_candidates, seed)

    def loop(sink) -> np.ndarray:
        late = []
        i = 0
        end = time.perf_counter() + seconds
        while (now := time.perf_counter()) < end:
            time.sleep(tick_s)
            late.append(time.perf_counter() - now - tick_s)
            if sink is not None:
                for _ in range(offers_per_tick):
                    record = pool[i % len(pool)]
                    i += 1
                    sink.offer(record)
        return np.array(late) * 1e6

    def summary(us: np.ndarray) -> dict:
        return {"ticks": int(us.size), "p50_us": float(np.percentile(us, 50)),
                "p99_us": float(np.percentile(us, 99)), "p999_us": float(np.percentile(us, 99.9)),
                "max_us": float(us.max()), "over_1ms": int((us > 1000).sum()), "over_5ms": int((us > 5000).sum())}

    load_before = os.getloadavg()
    baseline = loop(None)
    with tempfile.TemporaryDirectory(prefix="gil-probe-") as tmp:
        sink = RequestLogSink(SinkConfig(folder=tmp, queue_size=queue, row_group_rows=row_group_rows,
                                         writer=writer))
        logged = loop(sink)
        stats = sink.close()
    return {"config": {"seconds": seconds, "offers_per_tick": offers_per_tick, "tick_s": tick_s, "queue": queue,
                       "n_candidates": n_candidates, "writer": writer, "row_group_rows": row_group_rows},
            "load_before": load_before, "load_after": os.getloadavg(), "without_sink": summary(baseline),
            "with_sink": summary(logged), "written": stats.written, "dropped": stats.dropped_total,
            "offered": stats.offered, "files": stats.files, "writer_cpu_s": stats.feeder_cpu_s,
            "writer_max_slice_us": stats.feeder_max_slice_s * 1e6}


def conversion_cost(*, n_records: int = 1024, n_candidates: int = 50, chunk: int = 128, repeats: int = 5) -> dict:
    """CPU time (`thread_time`, best of `repeats`) to check and convert `n_records` records to Arrow: one
    `check()` per record and one `records_to_table` call (the previous writer's way), and, where the tree has
    them, `check_records` and `records_to_batch` per `chunk` (the current one's). Runs on older trees too."""
    from models.data import requestlog as rl

    records = _probe_records(n_records, n_candidates, 0)

    def best(f) -> float:
        out = float("inf")
        for _ in range(repeats):
            t0 = time.thread_time()
            f()
            out = min(out, time.thread_time() - t0)
        return out * 1e3

    report = {"n_records": n_records, "n_candidates": n_candidates, "load": os.getloadavg()[0],
              "check_each_ms": best(lambda: [r.check() for r in records]),
              "records_to_table_ms": best(lambda: rl.records_to_table(records))}
    if hasattr(rl, "check_records"):
        parts = [records[i:i + chunk] for i in range(0, n_records, chunk)]
        report["check_records_ms"] = best(lambda: [rl.check_records(c) for c in parts])
        report["records_to_batch_ms"] = best(lambda: [rl.records_to_batch(c) for c in parts])
    return report


def render_probe(report: dict) -> str:
    lines = [f"load average before {report['load_before'][0]:.2f}, after {report['load_after'][0]:.2f} (1 min); "
             f"{report['config']['writer']} writer, {report['offered']} offered, {report['written']} written in "
             f"{report['files']} files, {report['dropped']} dropped"]
    for name in ("without_sink", "with_sink"):
        s = report[name]
        lines.append(f"{name.replace('_', ' '):>12}: wake-up lateness p50 {s['p50_us']:.0f} µs, p99 {s['p99_us']:.0f} "
                     f"µs, p99.9 {s['p999_us']:.0f} µs, max {s['max_us']:.0f} µs; {s['over_1ms']} of {s['ticks']} "
                     f"ticks over 1 ms, {s['over_5ms']} over 5 ms")
    lines.append(f"writer thread: {report['writer_cpu_s'] * 1e3:.0f} ms CPU, longest accounted slice "
                 f"{report['writer_max_slice_us']:.0f} µs")
    return "\n".join(lines)


def render(report: dict) -> str:
    lines = [f"load average before {report['load_before'][0]:.2f}, after {report['load_after'][0]:.2f} (1 min)"]
    for name in ("off", "on"):
        c, s = report[name]["client"], report[name]["server"]
        lines.append(f"logging {name:>3}: client p50 {c['p50_us']:.0f} µs p99 {c['p99_us']:.0f} µs | "
                     f"server total p50 {s['p50_us']:.0f} µs p99 {s['p99_us']:.0f} µs ({c['n']} requests)")
    lines.append(f"p99 on/off, pooled: client {report['p99_ratio_client']:.3f}, server {report['p99_ratio_server']:.3f}"
                 f"; median over {len(report['block_p99_ratios_server'])} paired blocks: client "
                 f"{report['median_block_p99_ratio_client']:.3f}, server {report['median_block_p99_ratio_server']:.3f}")
    if report["config"].get("aa"):
        lines.append("A/A control: the second server ran without logging too (the first one's flags and a "
                     "metrics port)")
        return "\n".join([*lines, _verdict(report)])
    lines.append(f"logging server: {report['sent_to_logging_server']} sent, {report['written']} written, "
                 f"dropped {json.dumps(report['dropped'])}")
    over = report["feeder_slices_over"]
    lines.append(f"request-log thread of the serving process ({report['config']['writer']} writer): "
                 f"{report['feeder_cpu_us_per_record']:.1f} µs CPU per record handed over; of its "
                 f"{report['feeder_slices']:.0f} stretches between lock releases {over['100us']:.0f} were over "
                 f"100 µs and {over['1000us']:.0f} over 1 ms (longest {report['feeder_max_slice_us']:.0f} µs)")
    if report.get("writer_native_max_us"):
        lines.append(f"  besides, Parquet writes and publishes (lock released inside): "
                     f"{report['writer_native_cpu_us_per_record']:.1f} µs CPU per record, longest "
                     f"{report['writer_native_max_us']:.0f} µs")
    if report.get("writer_gate_waits"):
        lines.append(f"  slices that waited for an idle moment: {report['writer_gate_waits']:.0f}, of which "
                     f"{report.get('writer_gate_timeouts', 0):.0f} went ahead after the longest wait")
    return "\n".join([*lines, _verdict(report)])


def _verdict(report: dict) -> str:
    bound = report["config"]["max_ratio"]
    verdict = "PASS" if report["within_bound"] else "FAIL"
    return (f"verdict: server p99 on/off {report['p99_ratio_server']:.3f} "
            f"{'<=' if report['within_bound'] else '>'} {bound:.2f}: {verdict}")


def summarise(reports: list[dict]) -> dict:
    """Over repeated runs: each run's pooled server p99 ratio, their median, and the geometric mean with a
    95 % t interval over runs (on log ratios: a ratio of 1.1 and one of 1/1.1 are the same distance from 1).
    One run's ratio swings by ±15 % on a 2-core host with the same code (the `--aa` control shows how much);
    the interval says what the runs together establish."""
    from models.stats import ratio_interval

    ratios = np.array([r["p99_ratio_server"] for r in reports])
    mean, low, high = ratio_interval(ratios)  # the runs are the pairs: on vs off within each run
    bound = reports[0]["config"]["max_ratio"]
    return {"runs": len(ratios), "ratios": ratios.round(4).tolist(), "median": float(np.median(ratios)),
            "geometric_mean": mean, "interval_95": [low, high],
            "within_bound": int((ratios <= bound).sum()), "bound": bound,
            "median_block_ratio_median": float(np.median([r["median_block_p99_ratio_server"] for r in reports])),
            "client_ratio_median": float(np.median([r["p99_ratio_client"] for r in reports]))}


def render_summary(summary: dict, aa: bool) -> str:
    lo, hi = summary["interval_95"]
    what = "A/A control (both servers without logging)" if aa else "logging on / off"
    return (f"{summary['runs']} runs, {what}: server p99 ratio per run {summary['ratios']}\n"
            f"  median {summary['median']:.3f}; geometric mean {summary['geometric_mean']:.3f} [95 % {lo:.3f}, "
            f"{hi:.3f}]; {summary['within_bound']} of {summary['runs']} runs ≤ {summary['bound']:.2f}; median "
            f"of the runs' median block ratios {summary['median_block_ratio_median']:.3f}; client p99 ratio median "
            f"{summary['client_ratio_median']:.3f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_requestlog", description=__doc__.split("\n")[0])
    p.add_argument("--repository")
    p.add_argument("--cache-dir")
    p.add_argument("--model")
    p.add_argument("--catalog")
    p.add_argument("--gil-probe", action="store_true", help="no servers: how late a thread wakes while the "
                   "sink's writer works in the same process (gil_probe)")
    p.add_argument("--probe-seconds", type=float, default=20.0)
    p.add_argument("--conversion", action="store_true", help="no servers: CPU time to check and convert 1,024 "
                   "records (conversion_cost)")
    p.add_argument("--requests", type=int, default=BenchConfig.requests_per_block, help="per block")
    p.add_argument("--blocks", type=int, default=BenchConfig.blocks, help="per server, alternating")
    p.add_argument("--concurrency", type=int, default=BenchConfig.concurrency)
    p.add_argument("--candidates", type=int, default=BenchConfig.n_candidates)
    p.add_argument("--queue", type=int, default=BenchConfig.queue, help="request_log_queue of the logging server")
    p.add_argument("--transfer-sample", type=float, default=BenchConfig.transfer_sample)
    p.add_argument("--writer", choices=("process", "thread"), default=BenchConfig.writer,
                   help="the logging server's --request-log-writer (default: the server's default, thread)")
    p.add_argument("--runs", type=int, default=1, help="repeat the comparison; with more than one, the report "
                   "ends with the runs' median and geometric mean ratio with a 95 %% interval (summarise)")
    p.add_argument("--aa", action="store_true", help="the control: the second server runs without logging too")
    p.add_argument("--json", help="write the report here too")
    a = p.parse_args(argv)
    if a.conversion:
        print(json.dumps(conversion_cost(n_candidates=a.candidates), indent=2))
        return 0
    if a.gil_probe:
        probe = gil_probe(seconds=a.probe_seconds, queue=a.queue, n_candidates=a.candidates, writer=a.writer)
        print(render_probe(probe))
        if a.json:
            Path(a.json).write_text(json.dumps(probe, indent=2))
        return 0
    missing = [f"--{n.replace('_', '-')}" for n in ("repository", "cache_dir", "model", "catalog") if not getattr(a, n)]
    if missing:
        p.error(f"{', '.join(missing)} required (or --gil-probe)")
    config = BenchConfig(a.repository, a.cache_dir, a.model, a.catalog, requests_per_block=a.requests,
                         blocks=a.blocks, concurrency=a.concurrency, n_candidates=a.candidates, queue=a.queue,
                         transfer_sample=a.transfer_sample, writer=a.writer, aa=a.aa)
    reports = []
    for i in range(a.runs):
        with tempfile.TemporaryDirectory(prefix="bench-requestlog-") as tmp:
            report = run_bench(config, Path(tmp) / "requestlog")
        print((f"run {i + 1} of {a.runs}\n" if a.runs > 1 else "") + render(report), flush=True)
        reports.append(report)
    out: dict = reports[0]
    if a.runs > 1:
        out = {"summary": summarise(reports), "runs": reports}
        print(render_summary(out["summary"], a.aa))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
