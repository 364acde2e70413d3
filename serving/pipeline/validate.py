"""Stage 2, validate: DecodedRequest → ParsedRequest. Every refusal names the field, the value and the limit.

Runs before any lookup or inference so a bad request costs microseconds and touches nothing.
The per-candidate checks run as one compiled pass (`serving.pipeline.kernels.candidates_ok`) that only
says whether every value is within its limits; when one is not, the numpy checks below (one pass per
field, the reference) find it and raise, so every message is the same whichever ran first. Checks run
in a fixed order (request, user, candidates, model), so a request breaking two limits is always
refused for the same one. The limits that depend on the model (its dense width) are checked by
route, which knows the model.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable

import numpy as np

from serving.config import ServerConfig
from serving.errors import InvalidRequest
from serving.pipeline.context import RequestContext
from serving.pipeline.kernels import KERNELS, NoCompiledKernel
from serving.pipeline.values import DecodedRequest, ParsedRequest

MAX_MODEL_NAME = 128
_MODEL_NAME = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_MODEL_NAME}}}")  # the exporter's rule for model names


_V4_CLEAR = ~(0xF000 << 64) & ~(0xC000 << 48)  # the version and variant bits of a 128-bit UUID
_V4_SET = (0x4000 << 64) | (0x8000 << 48)  # version 4 (random), variant RFC 4122


def new_request_id() -> str:
    """A random version-4 UUID as 32 hex digits: what `uuid.uuid4().hex` gives, in less than half its
    time (one per request that arrives without an id)."""
    return f"{int.from_bytes(os.urandom(16)) & _V4_CLEAR | _V4_SET:032x}"


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _check_ids(name: str, values: np.ndarray) -> None:
    if values.min() < 0:  # one reduction on the common path; the mask only when refusing
        i = _first_bad(values < 0)
        raise InvalidRequest(f"candidates[{i}].{name}: must be >= 0, got {int(values[i])}")


def validate_request(req: DecodedRequest, config: ServerConfig, default_model: str,
                     now_ms: int | None = None) -> ParsedRequest:
    """`req` checked against `config`'s limits; the request time defaults to `now_ms` (server time)."""
    # the compiled pass vouches for every per-candidate value (and the recent categories) at once; when
    # it finds one out of its limits, the numpy checks below run and name it
    try:
        checked = KERNELS is not None and KERNELS.call(
            KERNELS.candidates_ok, req.recent_categories, req.ad_id, req.advertiser_id, req.campaign_id,
            req.category, req.bid, req.dense, float(config.max_bid), float(config.max_abs_dense_feature))
    except NoCompiledKernel:  # arrays of a type the kernel was not compiled for: the numpy checks decide
        checked = False
    n = req.n_candidates
    if n == 0:
        raise InvalidRequest("candidates: at least one candidate is required")
    if n > config.max_candidates:
        raise InvalidRequest(f"candidates: {n} candidates exceed the limit of {config.max_candidates}")
    if len(req.request_id) > config.max_request_id_len:
        raise InvalidRequest(f"request_id: {len(req.request_id)} characters exceed the limit of "
                             f"{config.max_request_id_len}")
    if req.model_name and not _MODEL_NAME.fullmatch(req.model_name):  # never echoed: it may be anything
        raise InvalidRequest(f"model.name: must be 1..{MAX_MODEL_NAME} letters, digits, '-' or '_' "
                             f"({len(req.model_name)} characters given)")
    if req.user_id < 0:
        raise InvalidRequest(f"user_id: must be >= 0, got {req.user_id}")
    now = int(time.time() * 1000) if now_ms is None else now_ms
    t = req.request_time_ms
    if t is not None:
        if t <= 0:
            raise InvalidRequest(f"request_time_ms: must be > 0 (Unix ms), got {t}")
        if t > now + config.max_future_skew_ms:
            raise InvalidRequest(f"request_time_ms: {t} is more than {config.max_future_skew_ms} ms in the future")
    else:
        t = now
    hour = req.hour_of_day
    if hour is not None:
        if not 0 <= hour <= 23:
            raise InvalidRequest(f"context.hour_of_day: must be within 0..23, got {hour}")
    else:
        hour = int((t // 3_600_000) % 24)
    if req.segment < 0:
        raise InvalidRequest(f"user.segment: must be >= 0, got {req.segment}")
    recent = req.recent_categories
    if len(recent) > config.max_recent_categories:
        raise InvalidRequest(f"user.recent_categories: {len(recent)} entries exceed the limit of "
                             f"{config.max_recent_categories}")
    if not checked and (recent < 0).any():
        raise InvalidRequest(f"user.recent_categories[{_first_bad(recent < 0)}]: must be >= 0")

    bid = req.bid
    if not checked:
        for name, arr in (("ad_id", req.ad_id), ("advertiser_id", req.advertiser_id),
                          ("campaign_id", req.campaign_id), ("category", req.category)):
            _check_ids(name, arr)
        bad_bid = ~np.isfinite(bid) | (bid < 0) | (bid > config.max_bid)
        if bad_bid.any():
            i = _first_bad(bad_bid)
            raise InvalidRequest(f"candidates[{i}].bid: must be finite, >= 0 and <= max_bid {config.max_bid:g}, "
                                 f"got {bid[i]}")
    if req.dense_width > config.max_dense_features:
        widths = req.dense_widths
        i = _first_bad(widths > config.max_dense_features)
        raise InvalidRequest(f"candidates[{i}].dense_features: {widths[i]} values exceed the limit of "
                             f"{config.max_dense_features}")
    dense = req.dense
    if not checked and dense.shape[1]:
        # bounded as well as finite: float32 values near 3.4e38 overflow inside the model (NaN scores)
        bad = ~(np.abs(dense) <= config.max_abs_dense_feature)
        if bad.any():
            i = int(np.flatnonzero(bad.any(axis=1))[0])
            raise InvalidRequest(f"candidates[{i}].dense_features: values must be finite and within "
                                 f"±max_abs_dense_feature {config.max_abs_dense_feature:g}")
    version = req.model_version
    if version is not None and version < 1:
        raise InvalidRequest(f"model.version: must be >= 1, got {version}")
    top_k = req.top_k
    if top_k is not None and top_k < 1:
        raise InvalidRequest(f"top_k: must be >= 1 when set, got {top_k}")
    return ParsedRequest(
        request_id=req.request_id, user_id=req.user_id, request_time_ms=t, time_defaulted=req.request_time_ms is None,
        placement=req.placement, device=req.device, hour=hour, segment=req.segment, recent_categories=recent,
        ad_id=req.ad_id, advertiser_id=req.advertiser_id, campaign_id=req.campaign_id, category=req.category,
        bid=bid, dense=dense, model_name=req.model_name or default_model, model_version=version, top_k=top_k,
    )


class ValidateStage:
    """DecodedRequest → ParsedRequest; gives the request an id when the caller sent none."""

    name = "validate"

    def __init__(self, config: ServerConfig, *, clock_ms: Callable[[], int] | None = None) -> None:
        if KERNELS is not None:
            KERNELS.warm()  # compiled here, never inside a request
        self.config = config
        self.clock_ms = clock_ms  # tests pin "now"; None reads the wall clock

    async def __call__(self, decoded: DecodedRequest, ctx: RequestContext) -> ParsedRequest:
        now = None if self.clock_ms is None else self.clock_ms()
        parsed = validate_request(decoded, self.config, self.config.default_model, now)
        ctx.request_id = parsed.request_id or new_request_id()
        ctx.model = parsed.model_name
        return parsed
