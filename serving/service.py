"""The AdRanking gRPC servicer: a thin adapter from a call to the request pipeline and back.

Score receives the request's raw bytes (decoding is the pipeline's first stage), runs
`serving.pipeline.Pipeline.run`, and returns the response or aborts the call with the status
`serving.errors.grpc_status` gives the error — the one place errors become status codes. It also
counts every outcome by status code with its latency (refusals, expiries and cancellations
included) and degraded responses, and installs the admission policy the config asks for. It holds no
scoring logic, so another transport can reuse the same pipeline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import grpc

from protos.adrank.v1 import ranking_pb2, ranking_pb2_grpc
from serving.access_log import AccessLog
from serving.backends.base import InferenceBackend
from serving.config import ServerConfig
from serving.errors import Overloaded, RankingError, grpc_status
from serving.history import HistoryProvider
from serving.metrics import ServiceMetrics
from serving.pipeline import Pipeline, RequestContext
from serving.pipeline.admission import ConcurrencyLimit
from serving.pipeline.context import ARMS
from serving.pipeline.decode_columns import ColumnsPayload
from serving.pipeline.route import readiness

Observer = Callable[[RequestContext, str, "ranking_pb2.ScoreResponse | None"], None]
"""Called once per Score outcome with its context, status name and response (None on error); must not block."""

log = logging.getLogger(__name__)


def admission_for(config: ServerConfig) -> ConcurrencyLimit | None:
    """The admission policy `config` asks for; None when max_in_flight is 0 (no limit)."""
    if config.max_in_flight == 0:
        return None
    return ConcurrencyLimit(config.max_in_flight, config.max_queued, config.max_queue_wait_ms / 1e3,
                            config.retry_after_ms)

SERVICE_NAME = ranking_pb2.DESCRIPTOR.services_by_name["AdRanking"].full_name


class AdRankingService(ranking_pb2_grpc.AdRankingServicer):
    """Usage::

        service = AdRankingService(config, backend, history=HistoryProvider("embedded", cache_dir))
        service.pipeline = service.pipeline.wrap("infer", my_wrapper)   # optional: swap or wrap a stage
        service.add_to_server(grpc_aio_server)
    """

    def __init__(self, config: ServerConfig, backend: InferenceBackend, metrics: ServiceMetrics | None = None,
                 history: HistoryProvider | None = None, *, pipeline: Pipeline | None = None) -> None:
        self.config = config
        self.backend = backend
        self.metrics = metrics or ServiceMetrics()
        self.history = history or HistoryProvider()
        self.access_log = AccessLog(config.access_log_sample, config.access_log_failures_per_s)
        self.admission = admission_for(config)
        if self.admission is not None:
            self.metrics.in_flight.set_function(lambda: self.admission.in_flight)
        self.pipeline = pipeline or Pipeline.build(config, backend, self.history, metrics=self.metrics,
                                                   admission=self.admission)
        self.observers: list[Observer] = []  # e.g. the rollout's per-arm analysis windows

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Registers Score and ScoreColumns with no request deserializer: the pipeline's decode stage
        parses the bytes, so a malformed body is INVALID_ARGUMENT and its parse time is a stage of its own."""
        handlers = {
            "Score": grpc.unary_unary_rpc_method_handler(
                self.Score, request_deserializer=None,
                response_serializer=ranking_pb2.ScoreResponse.SerializeToString),
            "ScoreColumns": grpc.unary_unary_rpc_method_handler(
                self.ScoreColumns, request_deserializer=None,
                response_serializer=ranking_pb2.ScoreColumnsResponse.SerializeToString)}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
        server.add_registered_method_handlers(SERVICE_NAME, handlers)

    def readiness(self) -> dict[str, str]:
        """Per loaded version: "ready" or why not (logged at start-up)."""
        return readiness(self.backend, self.history)

    def _model_label(self, ctx: RequestContext) -> str:
        """The metrics label of the model: a loaded model's name or "unknown", never the request's
        string as is (distinct names would each create a time series: memory grown by callers)."""
        name = ctx.model or self.config.default_model
        return name if name in self.backend.models() else "unknown"

    def _record(self, ctx: RequestContext, code: str, *, detail: str = "",
                response: ranking_pb2.ScoreResponse | ranking_pb2.ScoreColumnsResponse | None = None,
                scored: int | None = None) -> None:
        """Counts the outcome and its latency, whatever it was (refusals and expiries included), and
        hands it to the access log (sampled when OK, rate-limited per code otherwise)."""
        model = self._model_label(ctx)
        version = str(ctx.version) if ctx.version is not None and model != "unknown" else "?"
        elapsed = time.perf_counter() - ctx.started
        self.metrics.requests.labels(model, version, code).inc()
        self.metrics.worker_requests.inc()
        self.metrics.latency.labels(model, code).observe(elapsed)
        arm = ctx.arm if ctx.arm in ARMS else "?"
        self.metrics.arm_requests.labels(model, arm, code).inc()
        self.metrics.arm_latency.labels(model, arm).observe(elapsed)
        self.access_log.record(request_id=ctx.request_id, model=model,
                               version=ctx.version if version != "?" else None, code=code, latency_s=elapsed,
                               backend=response.served_by.backend if response is not None else "",
                               flags=ctx.flags, candidates=scored,
                               detail=detail)

    def _observe(self, ctx: RequestContext, code: str,
                 response: ranking_pb2.ScoreResponse | ranking_pb2.ScoreColumnsResponse | None) -> None:
        for observer in self.observers:
            try:
                observer(ctx, code, response)
            except Exception:  # noqa: BLE001 - an observer's bug must never fail a served request
                log.exception("Score observer failed for request_id=%r", ctx.request_id)

    async def ScoreColumns(self, request: ColumnsPayload | ranking_pb2.ScoreColumnsRequest,  # noqa: N802
                           context: grpc.aio.ServicerContext) -> ranking_pb2.ScoreColumnsResponse:
        """Score with candidates as columns: the same pipeline, its decode and encode reading and
        writing columns (the raw bytes are marked as ColumnsPayload for decode)."""
        if isinstance(request, bytes) and not isinstance(request, ColumnsPayload):
            request = ColumnsPayload(request)
        return await self.Score(request, context)

    async def Score(self, request: bytes | ranking_pb2.ScoreRequest,  # noqa: N802 - the gRPC method's name
                    context: grpc.aio.ServicerContext) -> ranking_pb2.ScoreResponse:
        ctx = RequestContext.begin(context.time_remaining(), max_s=self.config.max_deadline_ms / 1e3)
        try:
            response = await self.pipeline.run(request, ctx)
        except asyncio.CancelledError:  # the caller went away or its deadline passed mid-stage
            expired = ctx.deadline is not None and time.perf_counter() >= ctx.deadline
            self._record(ctx, "DEADLINE_EXCEEDED" if expired else "CANCELLED")
            raise
        except Exception as exc:  # every failure leaves through the one mapping below
            code, message = grpc_status(exc)
            if not isinstance(exc, RankingError):
                log.exception("Score failed for request_id=%r", ctx.request_id)
            elif code is grpc.StatusCode.INTERNAL:
                log.error("Score failed for request_id=%r: %s", ctx.request_id, message)
            if isinstance(exc, Overloaded):
                self.metrics.rejected.inc()
                hint = str(exc.retry_after_ms)
                context.set_trailing_metadata((("retry-after-ms", hint), ("grpc-retry-pushback-ms", hint)))
            self._record(ctx, code.name, detail=message)
            self._observe(ctx, code.name, None)
            await context.abort(code, message)
            raise AssertionError("unreachable") from exc  # context.abort raises
        response.served_by.arm = ctx.arm
        scored = (response.candidates.ad_id.length if ctx.wire == "columns" else len(response.candidates))
        self._record(ctx, "OK", response=response, scored=scored)
        self._observe(ctx, "OK", response)
        model = self._model_label(ctx)
        self.metrics.candidates.labels(model).inc(scored)
        if ranking_pb2.FLAG_USER_HISTORY_MISSING in ctx.flags:
            self.metrics.degraded.labels("user_history_missing").inc()
        if ranking_pb2.FLAG_HISTORY_CACHE_UNAVAILABLE in ctx.flags:
            self.metrics.degraded.labels("history_cache_unavailable").inc()
        return response
