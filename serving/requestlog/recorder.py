"""Records every scored request into the request log: a wrapper around the pipeline's encode stage.

Why encode: it is the last stage, so the context holds everything a record needs (request id, model
version, arm, fm_version, the embedding snapshot the history came from, flags, every other stage's
time), and the `Ranking` it encodes still carries every candidate's scores in request order, not only
the returned top_k. The record is built from those arrays (no protobuf is read back) and handed to
`RequestLogSink.offer`, which never blocks; a request outside the sample costs one hash and no record.

Logging never fails a request: an error while building a record is counted
(`adrank_requestlog_record_errors_total`) and logged once, and the response goes out as it would
have without the log.

Usage::

    sink = RequestLogSink(SinkConfig(folder="runs/requestlog"), registry=metrics.registry)
    service.pipeline = service.pipeline.wrap("encode", logging_encode(sink))
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter

from models.data.requestlog import RequestRecord
from models.features import vocab_index
from models.vocab import DEVICES, PLACEMENTS
from protos.adrank.v1 import ranking_pb2
from serving.pipeline.context import RequestContext
from serving.pipeline.pipeline import Stage
from serving.pipeline.values import Ranking
from serving.requestlog.no_history import NoHistoryScorer
from serving.requestlog.sink import RequestLogSink

if TYPE_CHECKING:
    from serving.config import ServerConfig
    from serving.service import AdRankingService

log = logging.getLogger(__name__)

_FLAG_NAMES: dict[int, str] = {v.number: v.name for v in ranking_pb2.Flag.DESCRIPTOR.values}


def record_from_ranking(ranking: Ranking, ctx: RequestContext, *, encode_us: int = 0,
                        no_history: tuple[np.ndarray, np.ndarray] | None = None,
                        shadow: tuple[int, np.ndarray, np.ndarray] | tuple[int, np.ndarray, np.ndarray, str] | None
                        = None) -> RequestRecord:
    """The log row of a request the pipeline scored: what the model saw (the validated request, the
    context as the model's indices) and every candidate's scores in request order.

    `encode_us` is the encode stage's own time, which the pipeline records only after the wrapped
    stage returns; the other stages come from `ctx.timings`. `no_history`: the (p_ctr, p_cvr) of the
    same candidates scored with FM history masked out, for a request in the transfer sample. `shadow`: the
    (version, p_ctr, p_cvr[, snapshot_id]) of a rollout's shadow version for a request it mirrored."""
    r, handle = ranking.request, ranking.handle
    stage_us = {name: int(s * 1e6) for name, s in ctx.timings.items()}
    stage_us["encode"] = encode_us
    return RequestRecord(
        request_id=ctx.request_id, request_time_ms=r.request_time_ms, user_id=r.user_id,
        placement=vocab_index(PLACEMENTS, r.placement), device=vocab_index(DEVICES, r.device), hour=r.hour,
        user_segment=r.segment, recent_categories=r.recent_categories.astype(np.int32),
        ad_id=r.ad_id, advertiser_id=r.advertiser_id, campaign_id=r.campaign_id,
        category=r.category.astype(np.int32), bid=r.bid, dense_features=r.dense if r.dense.shape[1] else None,
        model_name=handle.name, model_version=int(handle.version), rollout_arm=ctx.arm, backend=ranking.backend,
        fm_version=handle.fm_version, snapshot_id=ctx.snapshot_id,
        flags=[_FLAG_NAMES.get(f, str(f)) for f in ctx.flags], stage_us=stage_us,
        p_ctr=ranking.all_p_ctr, p_cvr=ranking.all_p_cvr, expected_value=ranking.all_expected_value,
        order=ranking.request_index.astype(np.int32),
        p_ctr_no_history=no_history[0] if no_history is not None else (),
        p_cvr_no_history=no_history[1] if no_history is not None else (),
        shadow_model_version=int(shadow[0]) if shadow is not None else 0,
        p_ctr_shadow=shadow[1] if shadow is not None else (), p_cvr_shadow=shadow[2] if shadow is not None else (),
        shadow_snapshot_id=str(shadow[3]) if shadow is not None and len(shadow) > 3 else "",
    )


class RecorderMetrics:
    """Failures to build a record (the sink counts everything after `offer`)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.record_errors = Counter("adrank_requestlog_record_errors", "Scored requests whose log record could "
                                     "not be built (the response was sent; the record is lost)",
                                     registry=registry)


def logging_encode(sink: RequestLogSink, *, registry: CollectorRegistry | None = None,
                   no_history: NoHistoryScorer | None = None) -> Callable[[Stage[Any, Any]], Stage[Any, Any]]:
    """A `Pipeline.wrap("encode", …)` wrapper that offers each scored request's record to `sink`
    after the response is built. `registry`: where the record-error counter goes (None: nowhere).
    `no_history`: requests in its sample are scored again without FM history after the response is
    built, and their record is offered once that is done, with both score sets. Likewise a request a
    rollout's shadow mirrored (`ctx.shadow`): its record waits for the shadow's scores and holds both."""
    metrics = RecorderMetrics(registry)
    warned = False

    def failed(ctx: RequestContext) -> None:
        nonlocal warned
        metrics.record_errors.inc()
        if not warned:
            warned = True
            log.exception("request log: could not build the record of request %r (further failures "
                          "are only counted)", ctx.request_id)

    def offer_when_scored(ranking: Ranking, ctx: RequestContext, encode_us: int, transfer: bool) -> None:
        """Offers the record once the second scorings it waits for are done: the no-history one (transfer
        sample) and/or the shadow version's (`ctx.shadow`). Both finish on the event loop, off the response
        path; a failed one leaves its columns empty."""
        parts: dict[str, Any] = {}
        waiting = int(transfer) + int(ctx.shadow is not None)

        def one_done() -> None:
            nonlocal waiting
            waiting -= 1
            if waiting:
                return
            try:
                sink.offer(record_from_ranking(ranking, ctx, encode_us=encode_us, no_history=parts.get("no_history"),
                                               shadow=parts.get("shadow")))
            except Exception:  # noqa: BLE001 - as below
                failed(ctx)

        if ctx.shadow is not None:
            def shadow_done(future: Any) -> None:
                if not future.cancelled() and future.exception() is None:
                    parts["shadow"] = future.result()
                one_done()
            ctx.shadow.add_done_callback(shadow_done)
        if transfer:
            assert no_history is not None

            def transfer_done(p_ctr: np.ndarray | None, p_cvr: np.ndarray | None) -> None:
                if p_ctr is not None and p_cvr is not None:
                    parts["no_history"] = (p_ctr, p_cvr)
                one_done()
            no_history.submit(ranking, transfer_done)

    def wrapper(encode: Stage[Ranking, ranking_pb2.ScoreResponse]) -> Stage[Ranking, ranking_pb2.ScoreResponse]:
        async def stage(ranking: Ranking, ctx: RequestContext) -> ranking_pb2.ScoreResponse:
            start = time.perf_counter()
            response = await encode(ranking, ctx)
            encode_us = int((time.perf_counter() - start) * 1e6)
            try:
                transfer = no_history is not None and no_history.wants(ctx.request_id, ranking.handle)
                if (transfer or ctx.shadow is not None) and sink.wants(ctx.request_id):
                    offer_when_scored(ranking, ctx, encode_us, transfer)
                else:
                    sink.offer_lazy(ctx.request_id, lambda: record_from_ranking(ranking, ctx, encode_us=encode_us))
            except Exception:  # noqa: BLE001 - the log must never fail a request that was scored
                failed(ctx)
            return response

        return stage

    return wrapper


def _requests_running(service: AdRankingService) -> Callable[[], bool] | None:
    """The thread writer's gate: True while the admission policy counts a request in flight (None without
    one: the writer then slices by time only)."""
    admission = service.admission
    if admission is None:
        return None
    return lambda: admission.in_flight > 0


def attach_request_log(service: AdRankingService, config: ServerConfig
                       ) -> tuple[RequestLogSink | None, NoHistoryScorer | None]:
    """When `config.request_log` names a folder: a sink writing there (its counters in the service's
    metrics registry), the scorer of the transfer sample (None when `transfer_sample` is 0) and the
    service's pipeline wrapped to feed them; (None, None) when logging is off. The caller owns both:
    on stop it drains the scorer, then closes the sink, which publishes what is queued."""
    if not config.request_log:
        return None, None
    from serving.requestlog.sink import SinkConfig

    registry = service.metrics.registry
    sink = RequestLogSink(SinkConfig(folder=config.request_log, sample_rate=config.request_log_sample,
                                     queue_size=config.request_log_queue,
                                     max_file_age_s=config.request_log_rotate_s, writer=config.request_log_writer),
                          registry=registry, busy=_requests_running(service))
    scorer = (NoHistoryScorer(service.backend, config.transfer_sample, registry=registry)
              if config.transfer_sample > 0 else None)
    service.pipeline = service.pipeline.wrap("encode", logging_encode(sink, registry=registry, no_history=scorer))
    log.info("request log: %s (sample rate %g, transfer sample %g, writer %s)", sink.folder,
             config.request_log_sample, config.transfer_sample, config.request_log_writer)
    return sink, scorer
