"""The serve part of `adrank bench`: Score end to end against raw onnxruntime on the same batch, the
in-process Score path stage by stage, a pyinstrument profile of it, and a short locust capacity ramp.

The in-process parts run the request pipeline through its public API: `Pipeline.run` on a message,
the stage times the pipeline records for every request (`ctx.timings`), and the infer stage's tensors
captured by wrapping that stage (no locust in this process). The capacity ramp runs locust through
`loadtests.runner` in a child process.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np

from embedding_cache.latency import latency_stats, percentiles
from loadtests.workload import LOAD_MIX
from serving.client import build_request

CANDIDATES = 200


def ensure_run(run_dir: Path, tmp: Path) -> Path:
    """`run_dir` when it holds a model repository and a catalog, else a tiny model trained into `tmp`."""
    if (run_dir / "model_repository").is_dir() and (run_dir / "catalog.npz").is_file():
        return run_dir
    from exporters.onnx_export import export_onnx
    from models.pipeline import TrainJob, run_train_job

    print(f"{run_dir} has no model repository + catalog: training a tiny model (20k events) …", flush=True)
    out = tmp / "run"
    _, ckpt = run_train_job(TrainJob(n_events=20_000, seed=0, epochs=1, out_dir=str(out)), progress=False)
    export_onnx(ckpt, out / "model_repository", "vm", 1, parity_examples=500)
    return out


def _request(run_dir: Path, seed: int = 0):
    from models.catalog import load_catalog

    catalog = load_catalog(run_dir / "catalog.npz")
    return build_request(int(catalog["user_id"][0]), CANDIDATES, catalog, seed=seed, mix=LOAD_MIX,
                         request_time_ms=int(catalog["max_ts_ms"][0]) + 1)


def timed_us(fn, n: int, warmup: int = 20) -> np.ndarray:
    """µs per call of `fn` over `n` calls, after `warmup` untimed ones (the benches' one timing loop)."""
    for _ in range(warmup):
        fn()
    out = np.empty(n)
    for i in range(n):
        t = time.perf_counter()
        fn()
        out[i] = (time.perf_counter() - t) * 1e6
    return out


def _stats(us: np.ndarray) -> dict:
    return latency_stats(us)


def in_process(run_dir: Path, request, n: int) -> dict:
    """The in-process Score path through the pipeline's public API (`Pipeline.run`, embedded backend,
    no gRPC): its total, each stage's time as the pipeline records it, and raw session.run on the
    exact tensors the infer stage received (captured by wrapping that stage)."""
    import onnxruntime as ort

    from protos.adrank.v1 import ranking_pb2
    from serving.backends.embedded import EmbeddedBackend
    from serving.config import ServerConfig
    from serving.metrics import ServiceMetrics
    from serving.pipeline import STAGE_NAMES, Pipeline, RequestContext
    from serving.validation import parse_request

    repo = run_dir / "model_repository"
    config = ServerConfig(model_repository=str(repo))
    backend = EmbeddedBackend(repo, intra_op_threads=config.intra_op_threads)
    backend.load()
    pipeline = Pipeline.build(config, backend, metrics=ServiceMetrics())  # observing its stages, as a server does
    captured: dict = {}

    def capture(infer):
        async def stage(inputs, ctx):
            captured.update(handle=inputs.handle, inputs=inputs.tensors)
            return await infer(inputs, ctx)
        return stage

    loop = asyncio.new_event_loop()
    response = loop.run_until_complete(pipeline.wrap("infer", capture).run(request, RequestContext.begin()))
    handle, inputs = captured["handle"], captured["inputs"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = config.intra_op_threads, 1
    session = ort.InferenceSession(str(repo / handle.name / str(handle.version) / handle.manifest.model_file),
                                   sess_options=opts, providers=["CPUExecutionProvider"])
    payload = request.SerializeToString()
    timings: list[tuple[int, int, int]] = []
    stage_s: list[list[float]] = []

    def score() -> None:
        ctx = RequestContext.begin()
        r = loop.run_until_complete(pipeline.run(request, ctx))
        timings.append((r.timing.features_us, r.timing.inference_us, r.timing.total_us))
        stage_s.append([ctx.timings[name] for name in STAGE_NAMES])

    out = {
        "ort_run": _stats(timed_us(lambda: session.run(["p_ctr", "p_cvr"], inputs), n)),
        "request_parse_wire": _stats(timed_us(lambda: ranking_pb2.ScoreRequest.FromString(payload), n)),
        "parse_request": _stats(timed_us(lambda: parse_request(request, config, config.default_model), n)),
        "score_in_process": _stats(timed_us(score, n)),
        "response_serialize": _stats(timed_us(response.SerializeToString, n)),
        "batch_shapes": {k: list(v.shape) for k, v in inputs.items()},
        "request_bytes": len(payload), "response_bytes": len(response.SerializeToString()),
    }
    t = np.asarray(timings[-n:], dtype=np.float64)
    out["features"] = _stats(t[:, 0])
    out["backend_infer"] = _stats(t[:, 1])
    out["score_total_server_timer"] = _stats(t[:, 2])
    per_stage = np.asarray(stage_s[-n:], dtype=np.float64) * 1e6
    out["stages"] = {name: _stats(per_stage[:, j]) for j, name in enumerate(STAGE_NAMES)}
    try:
        out["profile"] = profile(loop, pipeline, request, n=max(300, n))
    except ImportError as exc:  # pyinstrument is a dev extra
        out["profile"] = {"unavailable": f"pyinstrument not installed ({exc}); pip install -e '.[dev]'"}
    loop.close()
    return out


def profile(loop, pipeline, request, n: int) -> dict:
    """pyinstrument over n in-process Score calls: the call tree as text, and the mean time per stage
    as the pipeline itself records it (under the profiler, so every figure is inflated alike)."""
    from pyinstrument import Profiler

    from serving.pipeline import STAGE_NAMES, RequestContext

    profiler = Profiler(interval=0.0002)
    stages = dict.fromkeys(STAGE_NAMES, 0.0)
    t0 = time.perf_counter()
    profiler.start()
    for _ in range(n):
        ctx = RequestContext.begin()
        loop.run_until_complete(pipeline.run(request, ctx))
        for name, seconds in ctx.timings.items():
            stages[name] += seconds
    profiler.stop()
    total = time.perf_counter() - t0
    text = profiler.output_text(unicode=True, color=False, show_all=False)
    per_stage = {f"{name} (serving/pipeline/{name}.py)": seconds for name, seconds in stages.items()}
    per_stage["between stages (event loop, context, metrics)"] = max(total - sum(stages.values()), 0.0)
    return {"calls": n, "total_s": total, "per_call_us": total / n * 1e6,
            "stages_us": {k: v / n * 1e6 for k, v in per_stage.items()}, "text": text}


def end_to_end(run_dir: Path, serve_args: list[str], quick: bool, capacity: bool = False) -> dict:
    """Sequential Score calls through a real channel to a real server process; optionally a locust
    capacity ramp against the same server."""
    import grpc

    from protos.adrank.v1 import ranking_pb2_grpc
    from serving.process import ServerProcess

    request = _request(run_dir)
    n = 300 if quick else 2000
    out: dict = {}
    with ServerProcess(["--repository", str(run_dir / "model_repository"), *serve_args]) as srv:
        with grpc.insecure_channel(srv.target) as ch:
            stub = ranking_pb2_grpc.AdRankingStub(ch)
            server_us: list[int] = []

            def call() -> None:
                server_us.append(stub.Score(request, timeout=5).timing.total_us)

            client = timed_us(call, n, warmup=30)
        out.update({"calls": n, **percentiles(client, key="client_p{q}_us"),
                    **percentiles(server_us[-n:], key="server_p{q}_us")})
        if capacity:
            out["capacity"] = capacity_ramp(srv.target, run_dir, quick)
    return out


def capacity_ramp(target: str, run_dir: Path, quick: bool) -> dict | None:
    """`adrank loadtest --find-capacity` (locust in a child process) against the running server."""
    import tempfile

    from loadtests import runner

    with tempfile.TemporaryDirectory(prefix="adrank-bench-lt-") as tmp:
        argv = ["--target", target, "--catalog", str(run_dir / "catalog.npz"), "--out", tmp, "--find-capacity",
                "--max-users", "8" if quick else "16", "--step-duration", "3" if quick else "5",
                "--duration", "12" if quick else "25", "--candidates", f"fixed:{CANDIDATES}"]
        buf = io.StringIO()
        with redirect_stdout(buf):
            runner.main(argv)
        path = Path(tmp) / "capacity.json"
        if not path.exists():
            return None
        return {**json.loads(path.read_text()), "command": "adrank loadtest " + " ".join(argv)}


def measure(run_dir: Path, quick: bool) -> dict:
    n = 300 if quick else 2000
    print(f"serve bench on {run_dir}: in-process stages + profile …", flush=True)
    out = {"run": str(run_dir), "in_process": in_process(run_dir, _request(run_dir), n)}
    print("serve bench: end to end through a server child process + capacity ramp …", flush=True)
    out["e2e"] = end_to_end(run_dir, [], quick, capacity=True)
    return out


def rows(serve: dict, row_cls) -> list:
    ip, e2e = serve["in_process"], serve["e2e"]
    ort_us = ip["ort_run"]["p50_us"]
    ratio = e2e["client_p50_us"] / ort_us
    out = [
        row_cls("Score end to end vs raw onnxruntime",
                f"{e2e['client_p50_us']:,.0f} µs p50 (p99 {e2e['client_p99_us']:,.0f})",
                f"{ort_us:,.0f} µs session.run", ratio, "≤ 1.5×", ratio <= 1.5,
                f"200 candidates, real gRPC to a server child process; server's own timer p50 "
                f"{e2e['server_p50_us']:,.0f} µs = {e2e['server_p50_us'] / ort_us:.2f}× raw", e2e),
        row_cls("in-process Score vs raw onnxruntime", f"{ip['score_in_process']['p50_us']:,.0f} µs p50",
                f"{ort_us:,.0f} µs", ip["score_in_process"]["p50_us"] / ort_us, "", None,
                "Pipeline.run without gRPC, a message in (decode → validate → … → encode)"),
    ]
    cap = e2e.get("capacity") or {}
    if cap.get("capacity"):
        c, h = cap["capacity"], cap.get("half_capacity") or {}
        out.append(row_cls("capacity (locust, closed loop)", f"{c['candidates_per_s']:,.0f} candidates/s "
                           f"({c['rps']:,.0f} req/s, {c['users']} users)", "", None, "≥ 20,000 candidates/s",
                           c["candidates_per_s"] >= 20_000,
                           f"highest step with client p99 ≤ {cap['p99_budget_ms']:g} ms; "
                           "load generator shares the CPUs"))
        if h:
            out.append(row_cls("server p99 at half capacity", f"{h['server_p99_ms']:.2f} ms "
                               f"(client p99 {h['p99_ms']:.2f} ms)", f"{h['target_rps']:,.0f} req/s offered", None,
                               "≤ 10 ms", h["server_p99_ms"] <= 10, "server's own timer (timing.total_us)"))
    else:
        out.append(row_cls("capacity (locust, closed loop)", "not available", "", None, "", None,
                           "locust ramp produced no step within budget"))
    return out


def stage_table(serve: dict) -> str:
    ip, e2e = serve["in_process"], serve["e2e"]
    ort_us = ip["ort_run"]["p50_us"]
    lines = ["| stage (p50, one request) | µs | × raw onnxruntime |", "|---|---|---|"]
    stages = ip.get("stages", {})
    for label, us in (("raw onnxruntime session.run (baseline)", ort_us),
                      ("ScoreRequest.FromString (wire parse; in a server, part of decode)",
                       ip["request_parse_wire"]["p50_us"]),
                      *((f"stage {name} (pipeline timer)", st["p50_us"]) for name, st in stages.items()),
                      ("ScoreResponse.SerializeToString", ip["response_serialize"]["p50_us"]),
                      ("Pipeline.run in process (total)", ip["score_in_process"]["p50_us"]),
                      ("server timer timing.total_us (child process)", e2e["server_p50_us"]),
                      ("client round trip over gRPC", e2e["client_p50_us"])):
        lines.append(f"| {label} | {us:,.0f} | {us / ort_us:.2f} |")
    lines.append("")
    lines.append(f"Request {ip['request_bytes']:,} B, response {ip['response_bytes']:,} B; batch "
                 + ", ".join(f"{k} {v}" for k, v in ip["batch_shapes"].items()) + ".")
    return "\n".join(lines)


def profile_markdown(serve: dict) -> str:
    p = serve["in_process"]["profile"]
    if "unavailable" in p:
        return f"### Where the time goes\n\nnot available: {p['unavailable']}"
    lines = [f"### Where the time goes (pyinstrument, {p['calls']} in-process `Pipeline.run` calls, "
             f"{p['per_call_us']:,.0f} µs per call under the profiler)", "",
             "| stage | µs per call | share |", "|---|---|---|"]
    total = sum(p["stages_us"].values()) or 1.0
    for label, us in sorted(p["stages_us"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {label} | {us:,.0f} | {us / total:.0%} |")
    tree = "\n".join(line for line in p["text"].splitlines() if line.strip())[:6000]
    lines += ["", "<details><summary>pyinstrument call tree</summary>", "", "```", tree, "```", "", "</details>"]
    return "\n".join(lines)
