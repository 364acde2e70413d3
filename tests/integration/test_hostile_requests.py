"""Hostile input over a real channel: requests generated from the proto with Hypothesis, and raw bytes.

Two kinds of generated request: every field of ScoreRequest drawn from its proto type (full integer
ranges, NaN/±inf/huge and subnormal floats, long and non-ASCII strings, unknown enum values, up to 1,500
candidates), and a valid request with hostile values in the fields that reach the model (bids and dense
features up to and at the configured limits and beyond, extreme ids and categories), so that many reach
inference and the finite-output guarantee is exercised on OK answers. Then undecodable bytes. Expected:
no UNKNOWN or INTERNAL, no non-finite number in any OK answer, one throttled log line for the flood of
bad bytes and no traceback, and the server SERVING afterwards.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.catalog import load_catalog
from protos.adrank.v1 import ranking_pb2, ranking_pb2_grpc
from serving.client import build_request
from serving.process import ServerProcess

N_GENERATED, N_RAW = 4_700, 300  # 5,000 hostile requests in all (issue acceptance)
SCORE = "/adrank.v1.AdRanking/Score"
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
SPECIAL_FLOATS = [math.nan, math.inf, -math.inf, 3.5e38, 3.4e38, -3.4e38, 1e308, -1e308, 1e6, 1e6 + 1, -1e6,
                  5e-324, -0.0, 0.0]
_F = FieldDescriptor
_INT_RANGES = {_F.TYPE_INT64: (-2**63, 2**63 - 1), _F.TYPE_SINT64: (-2**63, 2**63 - 1),
               _F.TYPE_SFIXED64: (-2**63, 2**63 - 1), _F.TYPE_UINT64: (0, 2**64 - 1), _F.TYPE_FIXED64: (0, 2**64 - 1),
               _F.TYPE_INT32: (-2**31, 2**31 - 1), _F.TYPE_SINT32: (-2**31, 2**31 - 1),
               _F.TYPE_SFIXED32: (-2**31, 2**31 - 1), _F.TYPE_UINT32: (0, 2**32 - 1), _F.TYPE_FIXED32: (0, 2**32 - 1)}


def _ints(low: int, high: int) -> st.SearchStrategy[int]:
    edges = [v for v in (low, high, -1, 0, 1, 23, 24, 2**31 - 1, 2**53 + 1) if low <= v <= high]
    return st.one_of(st.sampled_from(edges), st.integers(max(low, -1000), min(high, 1000)), st.integers(low, high))


def _scalar(field: FieldDescriptor) -> st.SearchStrategy:
    if field.type in _INT_RANGES:
        return _ints(*_INT_RANGES[field.type])
    if field.type == _F.TYPE_DOUBLE:
        return st.one_of(st.sampled_from(SPECIAL_FLOATS), st.floats(allow_nan=True, allow_infinity=True))
    if field.type == _F.TYPE_FLOAT:
        return st.one_of(st.sampled_from([v for v in SPECIAL_FLOATS if not math.isfinite(v) or abs(v) < 3.4e38]),
                         st.floats(width=32, allow_nan=True, allow_infinity=True))
    if field.type == _F.TYPE_BOOL:
        return st.booleans()
    if field.type == _F.TYPE_STRING:
        return st.one_of(st.text(max_size=40), st.sampled_from(["", "vm", "feed", "ios", "é" * 3000, "x" * 5000]))
    if field.type == _F.TYPE_BYTES:
        return st.binary(max_size=64)
    if field.type == _F.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), _ints(-2**31, 2**31 - 1))
    raise TypeError(f"no strategy for field {field.full_name}")


def message_strategy(descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[dict]:
    """kwargs for the message of `descriptor`, every field optional and drawn from its proto type."""
    optional = {}
    for field in descriptor.fields:
        if field.type == _F.TYPE_MESSAGE:
            if depth >= 3:
                continue
            value = message_strategy(field.message_type, depth + 1)
        else:
            value = _scalar(field)
        optional[field.name] = st.lists(value, max_size=8) if field.is_repeated else value
    return st.fixed_dictionaries({}, optional=optional)


def _from_proto(kwargs: dict, many: int, template: dict) -> ranking_pb2.ScoreRequest:
    req = ranking_pb2.ScoreRequest(**kwargs)
    for i in range(many):  # many copies of one hostile candidate, distinct ad ids
        req.candidates.add(**template).ad_id = i
    return req


# Mostly within the limits (max_bid, max_abs_dense_feature: 1e6), at them, and now and then beyond.
BIDS = st.one_of(st.floats(0, 1e6), st.sampled_from([0.0, 1e-300, 5e-324, 1e6, 999_999.999]),
                 st.sampled_from([1e6 + 1e-6, 3.5e38, math.nan, math.inf]), st.floats(allow_nan=True))
DENSE = st.lists(st.one_of(st.floats(-1e6, 1e6, width=32), st.sampled_from([1e6, -1e6, 999_999.94, 1e-45, -0.0]),
                           st.sampled_from([3.4e38, math.nan, -math.inf])), max_size=4)


@st.composite
def hostile_requests(draw: st.DrawFn, base: ranking_pb2.ScoreRequest) -> ranking_pb2.ScoreRequest:
    if draw(st.booleans()):  # anything the proto allows
        kwargs = draw(message_strategy(ranking_pb2.ScoreRequest.DESCRIPTOR))
        many = draw(st.one_of(st.just(0), st.integers(0, 1_500)))
        template = draw(message_strategy(ranking_pb2.Candidate.DESCRIPTOR))
        return _from_proto(kwargs, many, template)
    req = ranking_pb2.ScoreRequest()
    req.CopyFrom(base)
    for i in draw(st.lists(st.integers(0, len(req.candidates) - 1), max_size=4)):  # a few candidates each
        req.candidates[i].bid = draw(BIDS)
        req.candidates[i].dense_features.extend(draw(DENSE))
    if draw(st.booleans()):
        i = draw(st.integers(0, len(req.candidates) - 1))
        field = draw(st.sampled_from(["ad_id", "advertiser_id", "campaign_id", "category"]))
        setattr(req.candidates[i], field, draw(_ints(0, 2**31 - 1 if field == "category" else 2**63 - 1)))
    if draw(st.booleans()):
        req.user.segment = draw(_ints(0, 2**31 - 1))
        req.user.recent_categories[:] = draw(st.lists(_ints(0, 2**31 - 1), max_size=5))
    if draw(st.booleans()):
        req.context.placement, req.context.device = draw(_scalar(ranking_pb2.Context.DESCRIPTOR.fields[0])), "ios"
    if draw(st.booleans()):
        req.top_k = draw(_ints(0, 2**32 - 1))
    return req


@pytest.fixture(scope="module")
def server(tiny_run: Path):
    with ServerProcess(["--repository", str(tiny_run / "model_repository")]) as srv:
        yield srv
    assert srv.proc.returncode == 0, srv.log_text()[-2000:]


@pytest.fixture(scope="module")
def base_request(tiny_run: Path) -> ranking_pb2.ScoreRequest:
    catalog = load_catalog(tiny_run / "catalog.npz")
    return build_request(int(catalog["user_id"][5]), 30, catalog, seed=9, request_time_ms=int(catalog["max_ts_ms"][0]))


def _finite(resp: ranking_pb2.ScoreResponse) -> bool:
    return all(math.isfinite(c.p_ctr) and math.isfinite(c.p_cvr) and math.isfinite(c.expected_value)
               for c in resp.candidates)


@pytest.mark.slow
def test_generated_hostile_requests_get_no_unknown_internal_or_non_finite(server, base_request):
    outcomes: Counter[str] = Counter()
    with grpc.insecure_channel(server.target, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
        stub = ranking_pb2_grpc.AdRankingStub(ch)

        @settings(max_examples=N_GENERATED, deadline=None, database=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.filter_too_much])
        @given(hostile_requests(base_request))
        def call(req: ranking_pb2.ScoreRequest) -> None:
            try:
                resp = stub.Score(req, timeout=10)
            except grpc.RpcError as exc:
                outcomes[exc.code().name] += 1
                assert exc.code() not in FORBIDDEN, (exc.code(), exc.details())
                assert len(exc.details() or "") < 600, "error messages stay short"
                return
            outcomes["OK"] += 1
            assert _finite(resp), resp

        call()
    sent = sum(outcomes.values())
    print(f"{sent} generated requests: {dict(outcomes)}")
    assert sent >= N_GENERATED * 0.95
    assert outcomes["OK"] >= 100 and outcomes["INVALID_ARGUMENT"] >= 100, outcomes
    assert server.health() == health_pb2.HealthCheckResponse.SERVING


def _raw_payloads(base: ranking_pb2.ScoreRequest) -> list[bytes]:
    rng = np.random.default_rng(13)
    good = base.SerializeToString()
    crafted = [good[: len(good) // 2], good[:-1],    # cut short
               b"\x0a\x03\xff\xfe\xfd" + good,             # request_id of invalid UTF-8
               b"\x32\xff\xff\xff\xff\x0f",                  # a length past the end
               b"\x08" + b"\xff" * 11,                      # an overlong varint
               b"\x0b", b"\x07\x00",                        # wire types that do not exist
               b"\x3a\x05\x0a\x03\xc3\x28\x00"]             # invalid UTF-8 inside a nested message
    noise = [rng.bytes(int(n)) for n in rng.integers(1, 4096, N_RAW - len(crafted))]
    return crafted + noise


def test_undecodable_bytes_are_invalid_argument_with_throttled_logging(server, base_request):
    raw = grpc.insecure_channel(server.target)
    call = raw.unary_unary(SCORE, request_serializer=None, response_deserializer=ranking_pb2.ScoreResponse.FromString)
    outcomes: Counter[str] = Counter()
    try:
        for payload in _raw_payloads(base_request):
            try:
                resp = call(payload, timeout=10)
                outcomes["OK"] += 1
                assert _finite(resp)
            except grpc.RpcError as exc:
                outcomes[exc.code().name] += 1
                assert exc.code() not in FORBIDDEN, (exc.code(), exc.details(), payload[:40])
                if "not a valid" in (exc.details() or ""):
                    assert re.fullmatch(r"request body is not a valid adrank\.v1\.ScoreRequest \(\d+ bytes\)",
                                        exc.details())
    finally:
        raw.close()
    print(f"{N_RAW} raw payloads: {dict(outcomes)}")
    assert outcomes["INVALID_ARGUMENT"] >= N_RAW * 0.5, outcomes
    log = server.log_text()
    assert "Traceback" not in log
    assert 1 <= log.count("undecodable request to /adrank.v1.AdRanking/Score") <= 3, log[-3000:]
    assert server.health() == health_pb2.HealthCheckResponse.SERVING
