"""`adrank demo`: the main job end to end on embedded defaults, no external services.

synthetic events → train a VM → export ONNX into a model repository → start the ranking server in
a child process → score requests over gRPC → print the ranking, test AUC/NE and latency → stop.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table


def run_demo(*, out_dir: str = "runs/demo", n_events: int = 300_000, seed: int = 0, requests: int = 200) -> int:
    console = Console()
    t_start = time.perf_counter()
    from exporters.onnx_export import export_onnx
    from models.catalog import load_catalog
    from models.pipeline import CATALOG, TrainJob, run_train_job
    from serving.cli import _next_version
    from serving.client import build_request, render_table
    from serving.process import ServerProcess

    out = Path(out_dir)
    console.rule("1/4 data + training")
    result, ckpt = run_train_job(TrainJob(dataset="synthetic", n_events=n_events, seed=seed, out_dir=str(out)))
    repo = out / "model_repository"
    version = _next_version(repo, "vm")
    console.rule("2/4 export")
    path = export_onnx(ckpt, repo, "vm", version)
    console.print(f"exported vm v{version} → {path}")
    console.rule("3/4 serve (embedded backend, child process)")
    catalog = load_catalog(out / CATALOG)
    import grpc

    from protos.adrank.v1 import ranking_pb2_grpc

    with ServerProcess(["--repository", str(repo), "--backend", "embedded"], log_path=str(out / "server.log")) as srv:
        console.print(f"ranking server SERVING on {srv.target}")
        console.rule(f"4/4 score {requests} requests × 200 candidates")
        rng = np.random.default_rng(seed)
        users = rng.choice(catalog["user_id"], size=requests)
        t_req = int(catalog["max_ts_ms"][0]) + 1
        client_ms, server_ms = [], []
        first = None
        with grpc.insecure_channel(srv.target) as ch:
            stub = ranking_pb2_grpc.AdRankingStub(ch)
            for i, u in enumerate(users):
                req = build_request(int(u), 200, catalog, seed=seed + i, request_time_ms=t_req, request_id=f"demo-{i}")
                t0 = time.perf_counter()
                resp = stub.Score(req, timeout=5)
                client_ms.append((time.perf_counter() - t0) * 1e3)
                server_ms.append(resp.timing.total_us / 1e3)
                if first is None:
                    first = (req, resp)
        console.print(render_table(first[1], first[0], limit=10))
    test = result.metrics["test"]
    table = Table(title="demo summary")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("test CTR AUC / NE", f"{test['ctr_auc']:.4f} / {test['ctr_ne']:.4f}")
    if "oracle_ctr_auc" in test:
        table.add_row("oracle CTR AUC / NE (true probabilities)", f"{test['oracle_ctr_auc']:.4f} / {test['oracle_ctr_ne']:.4f}")
    table.add_row("test CVR AUC (clicked rows)", f"{test.get('cvr_auc', float('nan')):.4f}")
    table.add_row("scored requests", f"{len(client_ms)} × 200 candidates")
    table.add_row("client latency p50 / p99 (ms)", f"{np.percentile(client_ms, 50):.2f} / {np.percentile(client_ms, 99):.2f}")
    table.add_row("server latency p50 / p99 (ms)", f"{np.percentile(server_ms, 50):.2f} / {np.percentile(server_ms, 99):.2f}")
    table.add_row("wall time (s)", f"{time.perf_counter() - t_start:.1f}")
    console.print(table)
    rc = srv.proc.returncode if srv.proc is not None else None
    if rc != 0:
        console.print(f"[red]server exited with {rc}; see {srv.log_path}[/red]")
        return 1
    console.print("server drained and exited with 0")
    return 0
