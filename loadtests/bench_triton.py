"""Score latency through the embedded and the Triton backends, as ratios to raw onnxruntime, in one run.

Three figures on the *same* 200-candidate batch, measured back to back in one process:

* raw — `InferenceSession.run` on the assembled tensors (the floor: what the model itself costs);
* infer — `backend.infer` alone, embedded vs Triton (the Triton hop: gRPC + dynamic batcher + python
  backend stub);
* Score — a gRPC `Score` call to an in-process `RankingServer` (validation, features, infer, ranking).

Without `--triton-url` the bundled tritonserver is started on the repository (python target) and
stopped at the end. `--synthetic` exports a random-weight VM first, so the bench runs anywhere.

    python -m loadtests.bench_triton --synthetic --json runs/bench/triton.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

from embedding_cache.latency import percentiles

CANDIDATES = 200


def _pcts(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1e3
    return {**percentiles(ms, key="p{q}_ms"), "n": len(ms)}


def synthetic_repository(root: Path, name: str = "vm") -> Path:
    """A random-weight VM with the demo's field sizes, exported as `<root>/repo/<name>/1`."""
    import torch

    from exporters.onnx_export import export_onnx
    from models.features import FeatureSpec
    from models.vm import VerticalModel, VMConfig

    torch.manual_seed(0)
    spec, config = FeatureSpec((5000, 500, 1000, 50, 6, 4, 24, 8)), VMConfig()
    ckpt = root / "vm.pt"
    torch.save({"state_dict": VerticalModel(spec, config).state_dict(), "feature_spec": spec.to_dict(),
                "vm_config": config.to_dict()}, ckpt)
    export_onnx(ckpt, root / "repo", name, 1, parity_examples=1_000, torchscript=False)
    return root / "repo"


async def _raw(session, inputs: dict) -> None:
    session.run(["p_ctr", "p_cvr"], inputs)


async def _timed(fn, n: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        await fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t0)
    return out


async def _measure(repo: Path, model: str, triton_url: str, n: int) -> dict:
    import grpc

    from models.features import DEVICES, PLACEMENTS, features_for_request, vocab_index
    from protos.adrank.v1 import ranking_pb2_grpc
    from serving.backends.embedded import EmbeddedBackend
    from serving.backends.triton import TritonBackend
    from serving.client import build_request
    from serving.config import ServerConfig
    from serving.server import RankingServer
    from serving.validation import parse_request

    req = build_request(1, CANDIDATES, None, seed=0, request_time_ms=1_700_000_000_000, model=model)
    results: dict = {}
    for label, backend in (("embedded", EmbeddedBackend(repo)), ("triton", TritonBackend(triton_url, repo))):
        config = ServerConfig(port=0, model_repository=str(repo), default_model=model, backend=label,
                              triton_url=triton_url)
        server = RankingServer(config, backend)
        port = await server.start()
        try:
            handle = backend.resolve(model, None)
            parsed = parse_request(req, config, model)
            inputs = features_for_request(
                handle.feature_spec, ad_id=parsed.ad_id, advertiser_id=parsed.advertiser_id,
                campaign_id=parsed.campaign_id, category=parsed.category, bid=parsed.bid,
                placement=vocab_index(PLACEMENTS, parsed.placement), device=vocab_index(DEVICES, parsed.device),
                hour=parsed.hour, user_segment=parsed.segment, recent_categories=parsed.recent_categories)
            if "raw" not in results:
                session = EmbeddedBackend(repo)._session(repo / model / str(handle.version) / "model.onnx")
                results["raw"] = _pcts(await _timed(partial(_raw, session, inputs), n, 50))
            results[f"{label}_infer"] = _pcts(await _timed(partial(backend.infer, handle, inputs), n, 20))
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = ranking_pb2_grpc.AdRankingStub(channel)
                results[f"{label}_score"] = _pcts(await _timed(partial(stub.Score, req, timeout=5), n, 20))
        finally:
            await server.stop(0.5)
    raw_p50 = results["raw"]["p50_ms"]
    for key in list(results):
        results[key]["x_raw_p50"] = results[key]["p50_ms"] / raw_p50
    return results


def markdown(results: dict, command: str) -> str:
    rows = [("raw onnxruntime `session.run`", "raw"), ("embedded `backend.infer`", "embedded_infer"),
            ("Triton `backend.infer`", "triton_infer"), ("Score via embedded (gRPC)", "embedded_score"),
            ("Score via Triton (gRPC)", "triton_score")]
    lines = [f"`{command}` — {CANDIDATES} candidates, sequential requests", "",
             "| path | p50 ms | p99 ms | p50 / raw |", "|---|---|---|---|"]
    for text, key in rows:
        r = results[key]
        lines.append(f"| {text} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['x_raw_p50']:.1f}× |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="adrank bench triton", description=__doc__.split("\n\n")[0])
    p.add_argument("--repository", default="runs/demo/model_repository")
    p.add_argument("--model", default="vm")
    p.add_argument("--synthetic", action="store_true", help="export a random-weight VM into a temp repository")
    p.add_argument("--triton-url", default=None, help="a running tritonserver on the same repository")
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--json", default=None, help="also write the figures here")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="adrank-bench-triton-") as tmp:
        repo = synthetic_repository(Path(tmp), a.model) if a.synthetic else Path(a.repository)
        handle = None
        url = a.triton_url
        if url is None:
            from exporters.triton_repo import write_triton_model
            from serving.triton import launcher

            write_triton_model(repo, a.model, target="python")
            print("starting the bundled tritonserver …", flush=True)
            handle = launcher.start(repo, models=[a.model], state_dir=Path(tmp) / "state")
            url = handle.grpc_url
        try:
            results = asyncio.run(_measure(repo, a.model, url, a.requests))
        finally:
            if handle is not None:
                from serving.triton import launcher

                launcher.stop(handle)
    command = "python -m loadtests.bench_triton " + " ".join(sys.argv[1:] if argv is None else argv)
    print(markdown(results, command.strip()))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps({"machine": platform.platform(), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
