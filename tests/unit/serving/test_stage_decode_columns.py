"""decode for ScoreColumns: Column blocks → the same DecodedRequest rows give; what only columns can
get wrong (dtype, byte count, lengths) is INVALID_ARGUMENT naming the field, and everything else is
refused by validate with the row path's own messages."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import serving_fakes as fakes

from protos.adrank.v1 import ranking_pb2
from serving.client import to_columns
from serving.config import ServerConfig
from serving.errors import InvalidRequest
from serving.pipeline import RequestContext
from serving.pipeline.decode import DecodeStage
from serving.pipeline.decode_columns import ColumnsPayload, parse_columns_wire
from serving.pipeline.validate import validate_request

FIELDS = ("ad_id", "advertiser_id", "campaign_id", "category", "bid", "recent_categories", "dense")


def _decode(payload, **cfg):
    ctx = RequestContext.begin()
    return asyncio.run(DecodeStage(ServerConfig(**cfg))(payload, ctx)), ctx


def _refusal(req: ranking_pb2.ScoreColumnsRequest, **cfg) -> str:
    """The message the columnar request is refused with, by decode or by validate."""
    config = ServerConfig(**cfg)
    with pytest.raises(InvalidRequest) as err:
        decoded, _ = _decode(ColumnsPayload(req.SerializeToString()), **cfg)
        validate_request(decoded, config, "vm", now_ms=fakes.NOW_MS)
    return str(err.value)


def _row_refusal(req: ranking_pb2.ScoreRequest, **cfg) -> str:
    config = ServerConfig(**cfg)
    with pytest.raises(InvalidRequest) as err:
        decoded, _ = _decode(req.SerializeToString(), **cfg)
        validate_request(decoded, config, "vm", now_ms=fakes.NOW_MS)
    return str(err.value)


def test_columns_decode_to_what_rows_decode_to_and_record_the_wire():
    req = fakes.request(6)
    for i, c in enumerate(req.candidates):
        c.dense_features.extend([0.5 * i, -1.0, 2.0][: 1 + i % 3])  # ragged rows: columns are zero-padded alike
    rows, rows_ctx = _decode(req.SerializeToString())
    cols, ctx = _decode(ColumnsPayload(to_columns(req).SerializeToString()))
    assert (rows_ctx.wire, ctx.wire) == ("rows", "columns") and ctx.request_id == "req-1"
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(cols, name), getattr(rows, name), err_msg=name)
        assert getattr(cols, name).dtype == getattr(rows, name).dtype, name
    assert cols.n_candidates == 6 and cols.dense.shape == (6, 3) and cols.dense_width == rows.dense_width == 3
    assert cols.dense_widths.tolist() == [3] * 6  # a matrix: every row as wide as the widest
    message, _ = _decode(to_columns(req))  # an in-process caller may hand the message itself
    np.testing.assert_array_equal(message.bid, rows.bid)


def test_candidate_columns_are_views_of_the_request_bytes_not_copies():
    cols, _ = _decode(ColumnsPayload(to_columns(fakes.request(4)).SerializeToString()))
    for name in ("ad_id", "advertiser_id", "campaign_id", "bid"):
        assert not getattr(cols, name).flags.owndata and not getattr(cols, name).flags.writeable, name


def test_undecodable_bytes_name_the_columns_message():
    with pytest.raises(InvalidRequest, match=r"^request body is not a valid adrank.v1.ScoreColumnsRequest"):
        parse_columns_wire(b"\xff\xff\xff\xff")


def test_a_column_shorter_than_ad_id_is_refused_naming_both_lengths():
    req = to_columns(fakes.request(5))
    req.candidates.bid.length, req.candidates.bid.data = 4, req.candidates.bid.data[:32]
    assert _refusal(req) == "candidates.bid: length 4 differs from candidates.ad_id length 5 (one value per candidate)"


def test_bytes_that_do_not_hold_length_values_of_the_dtype_are_refused():
    req = to_columns(fakes.request(5))
    req.candidates.campaign_id.data = req.candidates.campaign_id.data[:-1]
    assert _refusal(req) == "candidates.campaign_id: 39 bytes of data do not hold length 5 × 8 bytes (DTYPE_INT64)"


def test_a_wrong_dtype_is_refused_naming_the_one_the_field_takes():
    req = to_columns(fakes.request(3))
    col = req.candidates.category
    col.dtype, col.data = ranking_pb2.DTYPE_INT64, np.arange(3, dtype="<i8").tobytes()
    assert _refusal(req) == "candidates.category: dtype must be DTYPE_INT32, got DTYPE_INT64"
    req.candidates.bid.dtype = ranking_pb2.DTYPE_FLOAT32
    req.candidates.category.CopyFrom(to_columns(fakes.request(3)).candidates.category)
    assert _refusal(req) == "candidates.bid: dtype must be DTYPE_FLOAT64, got DTYPE_FLOAT32"


@pytest.mark.parametrize("change, cfg", [
    (lambda r: r.candidates[2].__setattr__("bid", float("nan")), {}),
    (lambda r: r.candidates[1].__setattr__("bid", float("inf")), {}),
    (lambda r: r.candidates[3].__setattr__("ad_id", -4), {}),
    (lambda r: r.candidates[0].__setattr__("category", -1), {}),
    (lambda r: r.candidates[4].__setattr__("bid", 2e6), {}),
    (lambda r: r.candidates[1].dense_features.extend([float("nan")]), {}),
    (lambda r: [c.dense_features.extend([1.0] * 5) for c in r.candidates], {"max_dense_features": 4}),
    (lambda r: None, {"max_candidates": 4}),
    (lambda r: r.candidates.clear(), {}),
    (lambda r: r.user.recent_categories.extend(range(70)), {}),
])
def test_limits_are_refused_with_the_row_paths_message(change, cfg):
    req = fakes.request(5)
    change(req)
    expected = _row_refusal(req, **cfg)
    assert _refusal(to_columns(req), **cfg) == expected


def test_dense_width_and_dense_features_go_together():
    req = to_columns(fakes.request(2))
    req.candidates.dense_width = 3
    assert "dense_width and dense_features go together" in _refusal(req)
    req.candidates.dense_features.dtype = ranking_pb2.DTYPE_FLOAT32
    req.candidates.dense_features.length, req.candidates.dense_features.data = 5, np.zeros(5, "<f4").tobytes()
    assert _refusal(req) == "candidates.dense_features: length 5 is not 2 candidates × dense_width 3"
