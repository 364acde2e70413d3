"""The AdRanking gRPC servicer: validate → features → infer → rank.

Errors are typed (serving.errors) and mapped to their gRPC status with the message that names the
field; an unexpected exception is logged and returned as INTERNAL without taking the server down.
"""

from __future__ import annotations

import logging
import time
import uuid

import grpc
import numpy as np

from models.features import DEVICES, PLACEMENTS, features_for_request, vocab_index
from protos.adrank.v1 import ranking_pb2, ranking_pb2_grpc
from serving.backends.base import InferenceBackend, ModelHandle
from serving.config import ServerConfig
from serving.errors import InvalidRequest, ModelNotFound, ModelNotReady, RankingError
from serving.finite import ensure_finite
from serving.history import HistoryProvider, needs_history
from serving.metrics import ServiceMetrics
from serving.validation import ParsedRequest, parse_request

log = logging.getLogger(__name__)


def rank_response(parsed: ParsedRequest, p_ctr: np.ndarray, p_cvr: np.ndarray) -> list[ranking_pb2.ScoredCandidate]:
    """The best `top_k` candidates by expected value (bid × pCTR × pCVR); ties keep request order."""
    ev = parsed.bid * p_ctr.astype(np.float64) * p_cvr.astype(np.float64)
    order = np.lexsort((np.arange(len(ev)), -ev))[:parsed.top_k]
    make = ranking_pb2.ScoredCandidate
    # plain Python scalars: message construction from numpy scalars is several times slower
    return [make(ad_id=a, request_index=i, p_ctr=c, p_cvr=v, expected_value=e, rank=r)
            for r, (a, i, c, v, e) in enumerate(zip(parsed.ad_id[order].tolist(), order.tolist(),
                                                     p_ctr[order].tolist(), p_cvr[order].tolist(),
                                                     ev[order].tolist(), strict=True), start=1)]


class AdRankingService(ranking_pb2_grpc.AdRankingServicer):
    def __init__(self, config: ServerConfig, backend: InferenceBackend, metrics: ServiceMetrics | None = None,
                 history: HistoryProvider | None = None) -> None:
        self.config = config
        self.backend = backend
        self.metrics = metrics or ServiceMetrics()
        self.history = history or HistoryProvider()

    def resolve(self, name: str, version: int | None) -> ModelHandle:
        """A pinned version must be ready (its FM history readable); an unpinned request goes to the
        newest version that is, so a rollout whose embeddings are missing never takes traffic."""
        if version is not None:
            handle = self.backend.resolve(name, version)
            self.history.check(handle)
            return handle
        reasons = []
        for v in reversed(self.backend.models().get(name, [])):
            handle = self.backend.resolve(name, v)
            try:
                self.history.check(handle)
                return handle
            except ModelNotReady as exc:
                reasons.append(f"v{v}: {exc}")
        if reasons:
            raise ModelNotReady(f"model.name: no version of {name!r} is ready; " + "; ".join(reasons))
        return self.backend.resolve(name, None)  # raises ModelNotFound naming what exists

    def readiness(self) -> dict[str, str]:
        """Per loaded version: "ready" or why not (logged at start-up)."""
        out = {}
        for name, versions in self.backend.models().items():
            for v in versions:
                try:
                    self.history.check(self.backend.resolve(name, v))
                    out[f"{name}/{v}"] = "ready"
                except (ModelNotReady, ModelNotFound) as exc:
                    out[f"{name}/{v}"] = str(exc)
        return out

    async def Score(self, request: ranking_pb2.ScoreRequest, context: grpc.aio.ServicerContext) -> ranking_pb2.ScoreResponse:  # noqa: N802
        t0 = time.perf_counter()
        model_label, version_label = request.model.name or self.config.default_model, "?"
        try:
            response = await self._score(request, t0)
            version_label = str(response.served_by.model_version)
            self.metrics.requests.labels(model_label, version_label, "OK").inc()
            self.metrics.latency.labels(model_label).observe(time.perf_counter() - t0)
            self.metrics.candidates.labels(model_label).inc(len(response.candidates))
            return response
        except RankingError as exc:
            self.metrics.requests.labels(model_label, version_label, exc.code.name).inc()
            await context.abort(exc.code, str(exc))
        except Exception:
            log.exception("Score failed for request_id=%r", request.request_id)
            self.metrics.requests.labels(model_label, version_label, "INTERNAL").inc()
            await context.abort(grpc.StatusCode.INTERNAL, "internal error while scoring; see server log")
        raise AssertionError("unreachable")  # context.abort raises

    async def _score(self, request: ranking_pb2.ScoreRequest, t0: float) -> ranking_pb2.ScoreResponse:
        parsed = parse_request(request, self.config, self.config.default_model)
        handle = self.resolve(parsed.model_name, parsed.model_version)
        spec = handle.feature_spec
        if parsed.dense.shape[1] > spec.max_extra_dense:
            raise InvalidRequest(f"candidates.dense_features: {parsed.dense.shape[1]} values exceed model "
                                 f"{handle.name}/{handle.version}'s width of {spec.max_extra_dense}")
        t_feat = time.perf_counter()
        inputs = features_for_request(
            spec, ad_id=parsed.ad_id, advertiser_id=parsed.advertiser_id, campaign_id=parsed.campaign_id,
            category=parsed.category, bid=parsed.bid, placement=vocab_index(PLACEMENTS, parsed.placement),
            device=vocab_index(DEVICES, parsed.device), hour=parsed.hour, user_segment=parsed.segment,
            recent_categories=parsed.recent_categories, extra_dense=parsed.dense if parsed.dense.size else None,
        )
        flags = []
        cache_us = 0
        if needs_history(handle):
            hist = await self.history.inputs(handle, parsed.user_id, parsed.request_time_ms, len(parsed.ad_id))
            inputs.update(hist.tensors)
            flags.extend(hist.flags)
            cache_us = hist.cache_us
            if hist.flags:
                self.metrics.degraded.labels("user_history_missing").inc()
        t_infer = time.perf_counter()
        result = await self.backend.infer(handle, inputs)
        ensure_finite(result.p_ctr, result.p_cvr, parsed.bid, model=f"{handle.name}/{handle.version}")
        t_rank = time.perf_counter()
        if parsed.time_defaulted:
            flags.append(ranking_pb2.FLAG_REQUEST_TIME_DEFAULTED)
        response = ranking_pb2.ScoreResponse(
            request_id=parsed.request_id or uuid.uuid4().hex,
            candidates=rank_response(parsed, result.p_ctr, result.p_cvr),
            served_by=ranking_pb2.ServedBy(model_name=handle.name, model_version=handle.version,
                                           fm_version=handle.fm_version, backend=self.backend.name),
            flags=flags, request_time_ms=parsed.request_time_ms,
        )
        end = time.perf_counter()
        response.timing.cache_us = cache_us
        response.timing.features_us = int((t_infer - t_feat) * 1e6) - cache_us
        response.timing.inference_us = int((t_rank - t_infer) * 1e6)
        response.timing.total_us = int((end - t0) * 1e6)
        return response
