"""decode: wire bytes or a message → DecodedRequest; undecodable bytes are INVALID_ARGUMENT, and
nothing is allocated for candidates or dense rows that validation will refuse."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import serving_fakes as fakes

from serving.config import ServerConfig
from serving.errors import InvalidRequest
from serving.pipeline import RequestContext
from serving.pipeline.decode import DecodeStage, decode_rows, parse_wire


def _decode(payload, **cfg):
    ctx = RequestContext.begin()
    return asyncio.run(DecodeStage(ServerConfig(**cfg))(payload, ctx)), ctx


def test_bytes_and_message_decode_alike_and_record_id_and_model():
    req = fakes.request(4)
    req.model.name = "vm"
    from_bytes, ctx = _decode(req.SerializeToString())
    from_message, _ = _decode(req)
    assert ctx.request_id == "req-1" and ctx.model == "vm"
    for name in ("ad_id", "advertiser_id", "campaign_id", "category", "bid", "dense_widths", "recent_categories"):
        np.testing.assert_array_equal(getattr(from_bytes, name), getattr(from_message, name))
    assert from_bytes.ad_id.tolist() == [100, 101, 102, 103] and from_bytes.bid.dtype == np.float64
    assert from_bytes.n_candidates == 4 and from_bytes.dense.shape == (4, 0)


def test_optional_fields_decode_to_none_when_absent():
    req = fakes.request(1)
    req.ClearField("request_time_ms")
    got = decode_rows(req, max_candidates=10, max_dense_features=4)
    assert got.request_time_ms is None and got.hour_of_day is None and got.model_version is None and got.top_k is None
    req.request_time_ms, req.context.hour_of_day, req.model.version, req.top_k = 0, 0, 3, 2
    got = decode_rows(req, max_candidates=10, max_dense_features=4)
    assert (got.request_time_ms, got.hour_of_day, got.model_version, got.top_k) == (0, 0, 3, 2)


def test_undecodable_bytes_are_invalid_argument_naming_the_request():
    with pytest.raises(InvalidRequest, match=r"^request body is not a valid adrank.v1.ScoreRequest \(4 bytes\)"):
        parse_wire(b"\xff\xff\xff\xff")


def test_dense_rows_are_zero_padded_to_the_widest():
    req = fakes.request(3)
    req.candidates[1].dense_features.extend([0.5, 0.25])
    got = decode_rows(req, max_candidates=10, max_dense_features=4)
    assert got.dense_widths.tolist() == [0, 2, 0] and got.dense_width == 2
    np.testing.assert_array_equal(got.dense, [[0, 0], [0.5, 0.25], [0, 0]])


def test_nothing_is_read_for_what_validation_refuses():
    too_many = decode_rows(fakes.request(5), max_candidates=4, max_dense_features=4)
    assert too_many.n_candidates == 5 and too_many.ad_id.size == 0 and too_many.bid.size == 0
    req = fakes.request(2)
    req.candidates[0].dense_features.extend([1.0] * 9)
    too_wide = decode_rows(req, max_candidates=4, max_dense_features=8)
    assert too_wide.dense_width == 9 and too_wide.dense.size == 0 and too_wide.ad_id.size == 2
