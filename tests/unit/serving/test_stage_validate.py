"""validate: DecodedRequest → ParsedRequest (the field-by-field refusals are in test_validation.py,
through the one-call `parse_request`); here what the stage adds: the id, the model, the clock."""

from __future__ import annotations

import asyncio
import re

import pytest
import serving_fakes as fakes

from serving.config import ServerConfig
from serving.errors import InvalidRequest
from serving.pipeline import RequestContext
from serving.pipeline.decode import decode_rows
from serving.pipeline.validate import ValidateStage


def _validate(req, **cfg):
    config = ServerConfig(**cfg)
    decoded = decode_rows(req, max_candidates=config.max_candidates, max_dense_features=config.max_dense_features)
    ctx = RequestContext.begin()
    parsed = asyncio.run(ValidateStage(config, clock_ms=lambda: fakes.NOW_MS)(decoded, ctx))
    return parsed, ctx


def test_valid_request_keeps_its_id_and_takes_the_default_model():
    parsed, ctx = _validate(fakes.request(3), default_model="vm_x")
    assert ctx.request_id == "req-1" and parsed.model_name == "vm_x" and ctx.model == "vm_x"
    assert parsed.ad_id.tolist() == [100, 101, 102] and not parsed.time_defaulted


def test_a_request_without_id_gets_one_and_without_time_gets_the_clock():
    req = fakes.request(1)
    req.request_id = ""
    req.ClearField("request_time_ms")
    parsed, ctx = _validate(req)
    assert re.fullmatch(r"[0-9a-f]{32}", ctx.request_id) and parsed.request_id == ""
    assert parsed.request_time_ms == fakes.NOW_MS and parsed.time_defaulted
    assert parsed.hour == (fakes.NOW_MS // 3_600_000) % 24


def test_the_first_broken_limit_is_the_one_reported():
    req = fakes.request(5)  # too many candidates *and* a negative user id: candidates are checked first
    req.user_id = -1
    with pytest.raises(InvalidRequest, match=r"^candidates: 5 candidates exceed the limit of 4"):
        _validate(req, max_candidates=4)
    req = fakes.request(2)
    req.candidates[1].dense_features.extend([1.0] * 3)
    with pytest.raises(InvalidRequest, match=r"^candidates\[1\]\.dense_features: 3 values exceed the limit of 2"):
        _validate(req, max_dense_features=2)
