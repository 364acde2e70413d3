"""Replay: re-score logged requests offline and check that the served scores come back bit for bit.

A logged request holds what the model saw (the validated request, context as indices) and who served it
(model version, fm_version, the embedding snapshot the history came from). Replay rebuilds the request,
reads the user's history from *that* snapshot (a reader pinned with `snapshot_id=`, not the newest one),
and runs the serving pipeline's own stage classes — validate, route (pinned to the logged version),
history, features, infer (onnxruntime, `EmbeddedBackend`), rank — so any difference between a served and
a replayed score is training/serving skew or non-determinism, never a second copy of the feature code.

Why in `serving`: it drives the serving stages and the embedded backend; it imports neither torch nor
training code (tests/integration/test_server_imports.py keeps the serving runtime free of both).

Usage::

    report = replay("runs/requestlog", "runs/demo/model_repository", "runs/demo/cache")
    report.identical_share, report.max_abs_diff

    adrank replay --request-log runs/requestlog --repository runs/demo/model_repository --cache-dir runs/demo/cache
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedding_cache import CacheError
from models.data.requestlog import read_request_log
from models.vocab import DEVICES, PLACEMENTS
from protos.adrank.v1 import ranking_pb2
from serving.backends.embedded import EmbeddedBackend
from serving.config import ServerConfig
from serving.errors import RankingError
from serving.history import HistoryProvider
from serving.pipeline import DecodedRequest, RequestContext
from serving.pipeline.features import FeaturesStage
from serving.pipeline.history import HistoryStage
from serving.pipeline.infer import InferStage
from serving.pipeline.rank import RankStage
from serving.pipeline.route import RouteStage
from serving.pipeline.validate import ValidateStage
from serving.pipeline.values import Ranking

_SCALARS = ("request_id", "request_time_ms", "user_id", "placement", "device", "hour", "user_segment",
            "model_name", "model_version", "snapshot_id", "fm_version")
_LISTS = {"recent_categories": np.int64, "ad_id": np.int64, "advertiser_id": np.int64, "campaign_id": np.int64,
          "category": np.int64, "bid": np.float64, "p_ctr": np.float32, "p_cvr": np.float32,
          "expected_value": np.float64, "order": np.int64}


@dataclass
class ReplayReport:
    """What came back: `identical` requests have every candidate's p_ctr, p_cvr and expected value equal
    bit for bit and the same order; `max_abs_diff` is the largest |served − replayed| over all scores."""

    requests: int = 0
    identical: int = 0
    differing: int = 0
    failed: int = 0
    candidates: int = 0
    max_abs_diff: float = 0.0
    flag_mismatches: int = 0
    snapshots: list[str] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    first_differing: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def identical_share(self) -> float:
        return self.identical / self.requests if self.requests else float("nan")

    def summary(self) -> str:
        return (f"replayed {self.requests:,} logged requests ({self.candidates:,} candidates, snapshots "
                f"{', '.join(s or '(none)' for s in self.snapshots)}) in {self.seconds:.1f} s: "
                f"{self.identical:,} bit-identical ({100 * self.identical_share:.2f}%), {self.differing:,} "
                f"differ, {self.failed:,} failed; largest difference {self.max_abs_diff:.3g}")


def _list_column(table: pa.Table, name: str, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """(flat values, offsets) of a list column: one concatenation instead of a Python list per row."""
    col = table.column(name).combine_chunks()
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(dtype, copy=False), offsets


def logged_requests(table: pa.Table) -> Iterator[dict]:
    """Each row of a request log as a dict of Python scalars and numpy arrays (candidate columns in
    request order, `dense` [N, E] float32)."""
    scalars = {name: table.column(name).to_pylist() for name in _SCALARS}
    lists = {name: _list_column(table, name, dtype) for name, dtype in _LISTS.items()}
    dense_col = table.column("dense_features").combine_chunks()
    per_candidate = pc.list_flatten(dense_col)
    widths = pc.list_value_length(per_candidate).to_numpy(zero_copy_only=False)
    dense_values = pc.list_flatten(per_candidate).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    dense_offsets = np.zeros(len(widths) + 1, np.int64)
    np.cumsum(widths, out=dense_offsets[1:])
    flags = table.column("flags").to_pylist()
    cand_offsets = lists["ad_id"][1]
    for i in range(table.num_rows):
        row = {name: values[i] for name, values in scalars.items()}
        for name, (flat, offsets) in lists.items():
            row[name] = flat[offsets[i]:offsets[i + 1]]
        lo, hi = cand_offsets[i], cand_offsets[i + 1]
        w = widths[lo:hi]
        width = int(w.max()) if len(w) else 0
        dense = np.zeros((hi - lo, width), np.float32)
        if width:
            for j in range(hi - lo):  # rows are as wide as the widest one (the recorder logs the padded matrix)
                a, b = dense_offsets[lo + j], dense_offsets[lo + j + 1]
                dense[j, :b - a] = dense_values[a:b]
        row["dense"], row["dense_widths"], row["flags"] = dense, w.astype(np.int64), flags[i]
        yield row


def decoded_from_log(row: dict) -> DecodedRequest:
    """The DecodedRequest the logged request validates back into: the context indices become the
    vocabulary strings they came from, the version is pinned, top_k is the number returned."""
    return DecodedRequest(
        request_id=row["request_id"], user_id=row["user_id"], request_time_ms=row["request_time_ms"],
        placement=PLACEMENTS[row["placement"]], device=DEVICES[row["device"]], hour_of_day=row["hour"],
        segment=row["user_segment"], recent_categories=row["recent_categories"], n_candidates=len(row["ad_id"]),
        ad_id=row["ad_id"], advertiser_id=row["advertiser_id"], campaign_id=row["campaign_id"],
        category=row["category"], bid=row["bid"], dense_widths=row["dense_widths"],
        dense_width=row["dense"].shape[1], dense=row["dense"], model_name=row["model_name"],
        model_version=row["model_version"], top_k=len(row["order"]),
    )


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.tobytes() == b.tobytes()


class Replayer:
    """The serving stages over one backend, with one history provider per logged snapshot (each
    pinned to its snapshot id, so replay reads exactly the codes the request was served with)."""

    def __init__(self, config: ServerConfig, backend: EmbeddedBackend, *, now_ms: int) -> None:
        self.config, self.backend = config, backend
        self.validate = ValidateStage(config, clock_ms=lambda: now_ms)
        self.features, self.infer, self.rank = FeaturesStage(), InferStage(backend), RankStage()
        self._by_snapshot: dict[str, tuple[RouteStage, HistoryStage]] = {}

    def _stages(self, snapshot_id: str) -> tuple[RouteStage, HistoryStage]:
        if snapshot_id not in self._by_snapshot:
            provider = HistoryProvider(self.config.cache_backend, self.config.cache_location,
                                       snapshot_id=snapshot_id or None)
            self._by_snapshot[snapshot_id] = (RouteStage(self.backend, provider), HistoryStage(provider))
        return self._by_snapshot[snapshot_id]

    async def score(self, row: dict) -> tuple[Ranking, RequestContext]:
        ctx = RequestContext.begin()
        route, history = self._stages(row["snapshot_id"])
        value = await self.validate(decoded_from_log(row), ctx)
        for stage in (route, history, self.features, self.infer, self.rank):
            value = await stage(value, ctx)
        return value, ctx


async def replay_async(request_log: str | Path, repository: str | Path, cache_dir: str | Path | None, *,
                       limit: int | None = None, progress: bool = False) -> ReplayReport:
    """`replay` inside a running event loop."""
    start = time.perf_counter()
    table = read_request_log(request_log)
    if limit is not None:
        table = table.slice(0, limit)
    cache = {"cache_backend": "embedded", "cache_location": str(cache_dir)} if cache_dir else {}
    config = ServerConfig.from_env(model_repository=str(repository), **cache)
    backend = EmbeddedBackend(config.model_repository, intra_op_threads=config.intra_op_threads)
    await backend.start()
    times = table.column("request_time_ms").to_numpy() if table.num_rows else np.zeros(0, np.int64)
    now_ms = max(int(time.time() * 1000), int(times.max()) if len(times) else 0)
    replayer = Replayer(config, backend, now_ms=now_ms)
    report = ReplayReport(snapshots=sorted(set(table.column("snapshot_id").to_pylist())))
    failures: Counter[str] = Counter()
    rows = logged_requests(table)
    if progress:
        from tqdm import tqdm

        rows = tqdm(rows, total=table.num_rows, desc="replay", unit="req")
    try:
        for row in rows:
            report.requests += 1
            report.candidates += len(row["ad_id"])
            try:
                ranking, ctx = await replayer.score(row)
            except (RankingError, CacheError) as exc:
                report.failed += 1
                failures[type(exc).__name__] += 1
                continue
            served = (row["p_ctr"], row["p_cvr"], row["expected_value"])
            again = (ranking.all_p_ctr, ranking.all_p_cvr, ranking.all_expected_value)
            for a, b in zip(served, again, strict=True):
                if a.shape == b.shape and a.size:
                    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
                    report.max_abs_diff = max(report.max_abs_diff, float(np.nanmax(diff)) if np.isfinite(diff).any()
                                              else float("inf"))
            same = all(_same_bits(a, b) for a, b in zip(served, again, strict=True)) and _same_bits(
                row["order"], ranking.request_index.astype(np.int64))
            if same:
                report.identical += 1
            else:
                report.differing += 1
                if len(report.first_differing) < 10:
                    report.first_differing.append(row["request_id"])
            flags = [ranking_pb2.Flag.Name(f) for f in ctx.flags]
            if flags != [f for f in row["flags"] if f != "FLAG_REQUEST_TIME_DEFAULTED"]:
                report.flag_mismatches += 1
    finally:
        await backend.close()
    report.failures = dict(failures)
    report.seconds = time.perf_counter() - start
    return report


def replay(request_log: str | Path, repository: str | Path, cache_dir: str | Path | None = None, *,
           limit: int | None = None, progress: bool = False) -> ReplayReport:
    """Re-scores every logged request (the first `limit`) from the log, the model repository and the
    embedding cache's recorded snapshots; see the module docstring."""
    return asyncio.run(replay_async(request_log, repository, cache_dir, limit=limit, progress=progress))


def main(argv: list[str] | None = None) -> int:
    """`adrank replay`: prints the summary; exit status 1 when a request differs or fails."""
    p = argparse.ArgumentParser(prog="adrank replay", description="Re-score logged requests from the log, the "
                                "recorded embedding snapshot and model version; report bit-identical share.")
    p.add_argument("--request-log", required=True, metavar="DIR")
    p.add_argument("--repository", required=True, metavar="R", help="model repository the requests were served from")
    p.add_argument("--cache-dir", default=None, metavar="C", help="embedded embedding cache (LoopFM models)")
    p.add_argument("--limit", type=int, default=None, help="replay only the first N logged requests")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the report as JSON")
    a = p.parse_args(argv)
    report = replay(a.request_log, a.repository, a.cache_dir, limit=a.limit, progress=sys.stderr.isatty())
    print(report.summary())
    if report.failures:
        print(f"failures by error: {report.failures}")
    if report.first_differing:
        print(f"first differing request ids: {', '.join(report.first_differing)}")
    if report.flag_mismatches:
        print(f"{report.flag_mismatches:,} requests raised other flags than were served")
    if a.json:
        Path(a.json).write_text(json.dumps({**asdict(report), "identical_share": report.identical_share}, indent=1))
    return 0 if report.identical == report.requests else 1
