"""`adrank demo`: the LoopFM loop end to end on embedded defaults, no external services.

synthetic events → train the FM (+ code autoencoder, DAS log) → embed every event's code into the embedded
cache → train a baseline VM and a LoopFM VM (FM history, sum pooling) → export both to ONNX → start the
ranking server with the cache in a child process → score users with history and a cold user over gRPC →
print test NE/AUC of VM vs VM + LoopFM (and the FM), the fm_version served, the flags and the latencies.

Every step is the function the matching CLI verb calls (`train fm`, `embed`, `train vm`, `export`, `serve`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

BASELINE, LOOPFM = "vm", "vm_loopfm"
CANDIDATES = 200


def run_demo(*, out_dir: str = "runs/demo", n_events: int = 100_000, seed: int = 0, requests: int = 200,
             fm_epochs: int = 2) -> int:
    console = Console()
    t_start = time.perf_counter()
    from embedding_cache.latency import percentiles
    from exporters.onnx_export import export_onnx
    from models.catalog import load_catalog
    from models.das import DAS_FILE, write_das
    from models.data import load_dataset
    from models.embed import CacheLocation
    from models.fm_pipeline import FMTrainConfig, embed_split, save_fm, train_fm
    from models.pipeline import CATALOG, TrainJob, run_train_job
    from models.train import TrainConfig, prepare_vm_data
    from serving.client import build_request, render_table
    from serving.model_repository import next_version
    from serving.process import ServerProcess

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    console.rule(f"1/6 data: {n_events:,} synthetic events (seed {seed})")
    events = load_dataset("synthetic", n_events=n_events, seed=seed)
    events.save(out / "events.npz")
    data = prepare_vm_data(events, TrainConfig.for_dataset("synthetic", seed=seed))

    console.rule("2/6 FM: train (Kunlun blocks + code autoencoder), log its predictions (DAS)")
    fm_config = FMTrainConfig(epochs=fm_epochs, seed=seed)
    fm = train_fm(data, fm_config)
    fm_path = save_fm(fm, data, fm_config, out / "fm.pt")
    write_das(out / DAS_FILE, fm.fm_version, events["event_id"], fm.logits, source=events.source)
    console.print(f"FM {fm.fm_version} → {fm_path}")

    console.rule("3/6 embed: every event's code into the embedded cache")
    cache = CacheLocation("embedded", str(out / "cache"))
    published = embed_split(fm_path, data, np.arange(len(events)), cache, progress=False)
    console.print(f"snapshot {published.snapshot_id} of {published.fm_version}: {published.rows_after:,} rows "
                  f"({published.codec}), high-water mark {published.high_water_ms}")

    console.rule("4/6 VMs: baseline and LoopFM (FM history strictly before t, sum pooling)")
    common = {"events_file": str(out / "events.npz"), "seed": seed, "epochs": 2}
    base, base_ckpt = run_train_job(TrainJob(out_dir=str(out), **common))
    loop, loop_ckpt = run_train_job(TrainJob(out_dir=str(out / "loopfm"), fm_checkpoint=str(fm_path),
                                             cache_dir=cache.location, history="sum", **common))

    console.rule("5/6 export both to ONNX (parity-checked) into the model repository")
    repo = out / "model_repository"
    versions = {}
    for name, ckpt in ((BASELINE, base_ckpt), (LOOPFM, loop_ckpt)):
        versions[name] = next_version(repo, name)
        console.print(f"exported {name} v{versions[name]} → {export_onnx(ckpt, repo, name, versions[name])}")

    console.rule(f"6/6 serve with the cache; score {requests} requests × {CANDIDATES} candidates, then a cold user")
    catalog = load_catalog(out / CATALOG)
    import grpc

    from protos.adrank.v1 import ranking_pb2, ranking_pb2_grpc

    args = ["--repository", str(repo), "--backend", "embedded", "--cache-dir", cache.location, "--model", LOOPFM]
    with ServerProcess(args, log_path=str(out / "server.log")) as srv:
        console.print(f"ranking server SERVING on {srv.target}")
        rng = np.random.default_rng(seed)
        users = rng.choice(catalog["user_id"], size=requests)
        t_req = int(catalog["max_ts_ms"][0]) + 1
        client_ms, server_ms, cache_us, served, first = [], [], [], set(), None
        with grpc.insecure_channel(srv.target) as ch:
            stub = ranking_pb2_grpc.AdRankingStub(ch)
            for i, u in enumerate(users):
                req = build_request(int(u), CANDIDATES, catalog, seed=seed + i, request_time_ms=t_req,
                                    request_id=f"demo-{i}", model=LOOPFM)
                t0 = time.perf_counter()
                resp = stub.Score(req, timeout=5)
                client_ms.append((time.perf_counter() - t0) * 1e3)
                server_ms.append(resp.timing.total_us / 1e3)
                cache_us.append(resp.timing.cache_us)
                served.add((resp.served_by.model_name, resp.served_by.model_version, resp.served_by.fm_version))
                first = first or (req, resp)
            cold_user = int(catalog["user_id"].max()) + 1_000_000  # never seen: no history in the cache
            cold_req = build_request(cold_user, CANDIDATES, catalog, seed=seed, request_time_ms=t_req, model=LOOPFM)
            cold = stub.Score(cold_req, timeout=5)
        console.print(render_table(first[1], first[0], limit=5))
        console.print(render_table(cold, cold_req, limit=3))

    table = Table(title=f"demo summary ({n_events:,} synthetic events, seed {seed}; test = last 20% of time)")
    table.add_column("model")
    table.add_column("test CTR AUC", justify="right")
    table.add_column("test CTR NE", justify="right")
    rows = [("FM (offline only, never served)", fm.metrics["test"]["ctr_auc"], fm.metrics["test"]["ctr_ne"]),
            (f"VM baseline ({BASELINE} v{versions[BASELINE]})", base.metrics["test"]["ctr_auc"],
             base.metrics["test"]["ctr_ne"]),
            (f"VM + LoopFM ({LOOPFM} v{versions[LOOPFM]})", loop.metrics["test"]["ctr_auc"],
             loop.metrics["test"]["ctr_ne"])]
    test = base.metrics["test"]
    if "oracle_ctr_auc" in test:
        rows.append(("oracle (true probabilities)", test["oracle_ctr_auc"], test["oracle_ctr_ne"]))
    for label, auc, ne in rows:
        table.add_row(label, f"{auc:.4f}", f"{ne:.4f}")
    console.print(table)

    serving = Table(title="serving")
    serving.add_column("figure")
    serving.add_column("value", justify="right")
    for name, version, fm_version in sorted(served):
        serving.add_row("served by", f"{name} v{version}, fm_version {fm_version}")
    cold_flags = ", ".join(ranking_pb2.Flag.Name(f) for f in cold.flags) or "none"
    serving.add_row(f"cold user {cold_user}: flags", cold_flags)
    c50, c99 = percentiles(client_ms).values()
    s50, s99 = percentiles(server_ms).values()
    k50, k99 = percentiles(cache_us).values()
    serving.add_row("client latency p50 / p99 (ms)", f"{c50:.2f} / {c99:.2f}")
    serving.add_row("server latency p50 / p99 (ms)", f"{s50:.2f} / {s99:.2f}")
    serving.add_row("cache lookup per request p50 / p99 (µs)", f"{k50:.0f} / {k99:.0f}")
    serving.add_row("wall time (s)", f"{time.perf_counter() - t_start:.1f}")
    console.print(serving)
    rc = srv.proc.returncode if srv.proc is not None else None
    if rc != 0:
        console.print(f"[red]server exited with {rc}; see {srv.log_path}[/red]")
        return 1
    if ranking_pb2.FLAG_USER_HISTORY_MISSING not in cold.flags:
        console.print("[red]the cold user was not flagged FLAG_USER_HISTORY_MISSING[/red]")
        return 1
    console.print("server drained and exited with 0")
    return 0
