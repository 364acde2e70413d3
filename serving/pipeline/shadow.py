"""Shadow scoring: the shadow version scores a sample of live requests off the response path.

`ShadowScorer.wrap` wraps the infer stage. After live's scores are computed, a live-arm request that the
routing table's shadow samples (`serving.rollout.routing.shadow_version`, by request id) is put on a
bounded queue and the live scores go on to rank and encode at once: the caller waits for nothing but
one `put_nowait`. When the queue is full, or `busy()` says the server is loaded (the server passes
"half of max_in_flight is running"), the mirror is dropped and counted: under load the shadow gives way,
never the caller. Workers take requests off the queue and run history → features → infer for the
shadow version — its own fm_version, its own codes — and keep the pair of score vectors. The model run
itself goes through the backend's `infer_aside`: with the in-process backend it runs in a low-priority
thread with the interpreter lock released, so the loop answers live requests while a mirror computes
(inline, a live request arriving during a mirror's run waited behind it):

- the latest `keep_pairs` pairs (request id, live and shadow p_ctr in request order), for inspection;
- for the request log, `ctx.shadow`: a future set when the request is queued, resolved with the shadow's
  `(version, p_ctr, p_cvr, snapshot_id)` (or None when the mirror failed or was never scored), so the
  logged record holds both score vectors and the snapshot the shadow's history came from
  (`serving.requestlog.recorder`);
- per model: pairs, dropped, failed, and the running means of the Spearman rank correlation of the two
  vectors, the overlap of their top-k candidates, and mean |Δp_ctr| (also as Prometheus histograms).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram

from exporters.manifest import ModelManifest
from serving.backends.base import InferenceBackend
from serving.errors import RankingError
from serving.history import HistoryProvider
from serving.pipeline.context import ARM_LIVE, RequestContext
from serving.pipeline.features import FeaturesStage
from serving.pipeline.history import HistoryStage
from serving.pipeline.infer import InferStage
from serving.pipeline.route import Router
from serving.pipeline.values import ModelInputs, ParsedRequest, Route, Scores
from serving.rollout.routing import shadow_version

log = logging.getLogger(__name__)
TOP_K = 10
RATIO_BUCKETS = (0.0, 0.25, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 1.0)
DELTA_BUCKETS = (1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation of two score vectors (ties broken by position); None below 2 values
    or when one vector is constant."""
    if a.size < 2:
        return None
    ra, rb = np.argsort(np.argsort(a)).astype(np.float64), np.argsort(np.argsort(b)).astype(np.float64)
    sa, sb = a.std(), b.std()
    if sa == 0 or sb == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int = TOP_K) -> float:
    """Share of a's k best candidates that are among b's k best (1.0: the same shortlist)."""
    k = min(k, a.size)
    if k == 0:
        return 1.0
    return len(set(np.argsort(-a)[:k].tolist()) & set(np.argsort(-b)[:k].tolist())) / k


@dataclass
class ShadowStats:
    pairs: int = 0
    dropped: int = 0
    failed: int = 0
    correlation_sum: float = 0.0
    correlation_n: int = 0
    overlap_sum: float = 0.0
    delta_sum: float = 0.0

    def as_dict(self) -> dict:
        return {"pairs": self.pairs, "dropped": self.dropped,
                "rank_correlation": self.correlation_sum / self.correlation_n if self.correlation_n else 0.0,
                "top_k_overlap": self.overlap_sum / self.pairs if self.pairs else 0.0,
                "mean_abs_delta_p_ctr": self.delta_sum / self.pairs if self.pairs else 0.0}


@dataclass(frozen=True)
class Pair:
    request_id: str
    model: str
    live_version: int
    shadow_version: int
    live_p_ctr: np.ndarray
    shadow_p_ctr: np.ndarray


@dataclass(eq=False)  # hashed by identity: the running ones are kept in a set
class _Job:
    model: str
    request: ParsedRequest
    live_version: int
    shadow: int
    request_id: str
    live_p_ctr: np.ndarray = field(repr=False)
    live_inputs: ModelInputs | None = field(default=None, repr=False)
    live_snapshot_id: str = ""  # the snapshot live's tensors were built from (a shadow reusing them used it too)
    result: asyncio.Future | None = field(default=None, repr=False)  # the RequestContext.shadow of the request

    def resolve(self, value: tuple[int, np.ndarray, np.ndarray, str] | None) -> None:
        if self.result is not None and not self.result.done():
            self.result.set_result(value)


def same_inputs(a: ModelManifest, b: ModelManifest) -> bool:
    """True when two versions' graphs read tensors built the same way: the same fm_version, feature
    spec, history codes and graph inputs — so the live request's tensors are the shadow's too."""
    return (a.fm_version, a.feature_spec, a.history, a.inputs) == (b.fm_version, b.feature_spec, b.history, b.inputs)


class ShadowScorer:
    """Usage (what the server does when a rollout registry is configured)::

        shadow = ShadowScorer(backend, history, watcher, registry=metrics.registry)
        service.pipeline = service.pipeline.wrap("infer", shadow.wrap)
        await shadow.start(); ...; await shadow.close()
    """

    def __init__(self, backend: InferenceBackend, history: HistoryProvider, router: Router, *,
                 queue_size: int = 64, workers: int = 1, keep_pairs: int = 1000,
                 busy: Callable[[], bool] | None = None, registry: CollectorRegistry | None = None) -> None:
        self.backend, self.router, self.busy = backend, router, busy or (lambda: False)
        self._history, self._features = HistoryStage(history), FeaturesStage()
        self._infer = InferStage(backend, aside=True)  # off the event loop where the backend is in-process
        self.queue_size, self.workers = queue_size, workers
        self._queue: asyncio.Queue[_Job] | None = None
        self._current: set[_Job] = set()  # jobs a worker is scoring now
        self._tasks: list[asyncio.Task] = []
        self.pairs: collections.deque[Pair] = collections.deque(maxlen=keep_pairs)
        self._stats: dict[str, ShadowStats] = {}
        registry = registry or CollectorRegistry()
        self.outcomes = Counter("adrank_shadow_requests", "Shadow mirrors by outcome (scored, dropped, failed)",
                                ["model", "outcome"], registry=registry)
        self.correlation = Histogram("adrank_shadow_rank_correlation", "Spearman correlation of live and shadow "
                                     "p_ctr per mirrored request", ["model"], buckets=RATIO_BUCKETS, registry=registry)
        self.overlap = Histogram("adrank_shadow_top_k_overlap", f"Share of live's top {TOP_K} in shadow's top "
                                 f"{TOP_K} per mirrored request", ["model"], buckets=RATIO_BUCKETS, registry=registry)
        self.delta = Histogram("adrank_shadow_abs_delta_p_ctr", "Mean |live p_ctr - shadow p_ctr| per mirrored "
                               "request", ["model"], buckets=DELTA_BUCKETS, registry=registry)

    async def start(self) -> None:
        self._queue = asyncio.Queue(self.queue_size)
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.workers)]

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Waits (up to `timeout_s`) until every queued mirror is scored, so the request log can record the
        pairs before it closes; what is still unscored then resolves to None (logged without the shadow)."""
        if self._queue is not None:
            try:
                await asyncio.wait_for(self._queue.join(), timeout_s)
            except TimeoutError:
                log.warning("shadow: %d mirrors still queued after %.1f s; their records carry no shadow scores",
                            self._queue.qsize(), timeout_s)
                self._abandon()

    def _abandon(self) -> None:
        """Resolves every queued or running mirror with None: nothing waiting on `ctx.shadow` waits forever."""
        for job in list(self._current):
            job.resolve(None)
        if self._queue is not None:
            while not self._queue.empty():
                self._queue.get_nowait().resolve(None)
                self._queue.task_done()

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._abandon()

    def stats(self, model: str) -> dict | None:
        s = self._stats.get(model)
        return None if s is None else s.as_dict()

    def _stat(self, model: str) -> ShadowStats:
        s = self._stats.get(model)
        if s is None:
            s = self._stats[model] = ShadowStats()
        return s

    def offer(self, scores: Scores, ctx: RequestContext, inputs: ModelInputs | None = None) -> bool:
        """Queue a mirror of this request when the shadow samples it; False when not sampled or dropped.
        `inputs` (live's tensors) let a shadow that builds the same tensors skip history and features."""
        if ctx.arm != ARM_LIVE or self._queue is None:
            return False
        table = self.router.table(scores.handle.name)
        shadow = shadow_version(table, ctx.arm, ctx.request_id) if table is not None else None
        if shadow is None:
            return False
        if self.busy():
            self._stat(scores.handle.name).dropped += 1
            self.outcomes.labels(scores.handle.name, "dropped").inc()
            return False
        job = _Job(scores.handle.name, scores.request, scores.handle.version, shadow, ctx.request_id,
                   np.array(scores.p_ctr, copy=True), inputs, ctx.snapshot_id)
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self._stat(scores.handle.name).dropped += 1
            self.outcomes.labels(scores.handle.name, "dropped").inc()
            return False
        job.result = ctx.shadow = asyncio.get_running_loop().create_future()
        return True

    def wrap(self, infer):
        """The infer stage with mirroring after it (Pipeline.wrap("infer", shadow.wrap))."""
        async def stage(inputs: ModelInputs, ctx: RequestContext) -> Scores:
            scores = await infer(inputs, ctx)
            self.offer(scores, ctx, inputs)
            return scores
        return stage

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            job = await self._queue.get()
            self._current.add(job)
            try:
                await self._score(job)
            except Exception as exc:  # noqa: BLE001 - a failed mirror is counted, never raised anywhere
                job.resolve(None)
                name = job.model
                self._stat(name).failed += 1
                self.outcomes.labels(name, "failed").inc()
                if not isinstance(exc, RankingError):
                    log.exception("shadow scoring of %s/%s failed", name, job.shadow)
            finally:
                self._current.discard(job)
                job.resolve(None)  # a no-op once scored; a cancelled worker leaves no one waiting
                self._queue.task_done()

    async def _score(self, job: _Job) -> None:
        name = job.model
        handle = self.backend.resolve(name, job.shadow)  # not loaded here yet: ModelNotFound, counted failed
        ctx = RequestContext.begin(1.0)
        live = job.live_inputs
        if live is not None and same_inputs(live.handle.manifest, handle.manifest):
            # The same tensors as live's (a retrained or re-exported graph on the same features): only
            # the inference runs again, so a mirror costs the loop one model run, not a whole request.
            model_inputs = ModelInputs(job.request, handle, live.tensors)
            ctx.snapshot_id = job.live_snapshot_id
        else:
            with_history = await self._history(Route(job.request, handle), ctx)
            model_inputs = await self._features(with_history, ctx)
        scores = await self._infer(model_inputs, ctx)
        job.resolve((job.shadow, np.asarray(scores.p_ctr, np.float32), np.asarray(scores.p_cvr, np.float32),
                     ctx.snapshot_id))
        live, shadow = job.live_p_ctr.astype(np.float64), np.asarray(scores.p_ctr, np.float64)
        self.pairs.append(Pair(job.request_id, name, job.live_version, job.shadow, job.live_p_ctr,
                               np.asarray(scores.p_ctr)))
        s = self._stat(name)
        s.pairs += 1
        rho = spearman(live, shadow)
        if rho is not None:
            s.correlation_sum += rho
            s.correlation_n += 1
            self.correlation.labels(name).observe(rho)
        overlap, delta = top_k_overlap(live, shadow), float(np.mean(np.abs(live - shadow)))
        s.overlap_sum += overlap
        s.delta_sum += delta
        self.overlap.labels(name).observe(overlap)
        self.delta.labels(name).observe(delta)
        self.outcomes.labels(name, "scored").inc()
