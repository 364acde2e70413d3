"""The AdRanking gRPC servicer: a thin adapter from a call to the request pipeline and back.

Score receives the request's raw bytes (decoding is the pipeline's first stage), runs
`serving.pipeline.Pipeline.run`, and returns the response or aborts the call with the status
`serving.errors.grpc_status` gives the error — the one place errors become status codes. It also
counts outcomes (by status code), the latency of successful calls and degraded responses. It holds no
scoring logic, so another transport can reuse the same pipeline.
"""

from __future__ import annotations

import logging
import time

import grpc

from protos.adrank.v1 import ranking_pb2, ranking_pb2_grpc
from serving.backends.base import InferenceBackend
from serving.config import ServerConfig
from serving.errors import RankingError, grpc_status
from serving.history import HistoryProvider
from serving.metrics import ServiceMetrics
from serving.pipeline import Pipeline, RequestContext
from serving.pipeline.route import readiness

log = logging.getLogger(__name__)

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
        self.pipeline = pipeline or Pipeline.build(config, backend, self.history, metrics=self.metrics)

    def add_to_server(self, server: grpc.aio.Server) -> None:
        """Registers Score with no request deserializer: the pipeline's decode stage parses the bytes,
        so a malformed body is INVALID_ARGUMENT and its parse time is a stage of its own."""
        handlers = {"Score": grpc.unary_unary_rpc_method_handler(
            self.Score, request_deserializer=None, response_serializer=ranking_pb2.ScoreResponse.SerializeToString)}
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
        server.add_registered_method_handlers(SERVICE_NAME, handlers)

    def readiness(self) -> dict[str, str]:
        """Per loaded version: "ready" or why not (logged at start-up)."""
        return readiness(self.backend, self.history)

    async def Score(self, request: bytes | ranking_pb2.ScoreRequest,  # noqa: N802 - the gRPC method's name
                    context: grpc.aio.ServicerContext) -> ranking_pb2.ScoreResponse:
        ctx = RequestContext.begin(context.time_remaining())
        try:
            response = await self.pipeline.run(request, ctx)
        except Exception as exc:  # every failure leaves through the one mapping below
            code, message = grpc_status(exc)
            if not isinstance(exc, RankingError):
                log.exception("Score failed for request_id=%r", ctx.request_id)
            elif code is grpc.StatusCode.INTERNAL:
                log.error("Score failed for request_id=%r: %s", ctx.request_id, message)
            self.metrics.requests.labels(ctx.model or self.config.default_model, "?", code.name).inc()
            await context.abort(code, message)
            raise AssertionError("unreachable") from exc  # context.abort raises
        model = ctx.model or self.config.default_model
        self.metrics.requests.labels(model, str(ctx.version), "OK").inc()
        self.metrics.latency.labels(model).observe(time.perf_counter() - ctx.started)
        self.metrics.candidates.labels(model).inc(len(response.candidates))
        if ranking_pb2.FLAG_USER_HISTORY_MISSING in ctx.flags:
            self.metrics.degraded.labels("user_history_missing").inc()
        return response
