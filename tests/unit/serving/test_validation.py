import math

import pytest

from protos.adrank.v1 import ranking_pb2
from serving.config import ServerConfig
from serving.errors import InvalidRequest
from serving.validation import parse_request

NOW = 1_800_000_000_000


def _req(n: int = 3) -> ranking_pb2.ScoreRequest:
    r = ranking_pb2.ScoreRequest(request_id="r", user_id=7, request_time_ms=NOW - 1000)
    for i in range(n):
        r.candidates.add(ad_id=i, advertiser_id=1, campaign_id=2, category=3, bid=1.5)
    return r


def parse(r, **cfg):
    return parse_request(r, ServerConfig(**cfg), "vm", now_ms=NOW)


def test_valid_request_parses_to_arrays():
    p = parse(_req(4))
    assert p.ad_id.tolist() == [0, 1, 2, 3]
    assert p.hour == ((NOW - 1000) // 3_600_000) % 24
    assert not p.time_defaulted and p.model_name == "vm" and p.model_version is None


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: r.ClearField("candidates"), "candidates"),
        (lambda r: setattr(r.candidates[1], "bid", math.nan), "candidates[1].bid"),
        (lambda r: setattr(r.candidates[2], "bid", -1.0), "candidates[2].bid"),
        (lambda r: setattr(r.candidates[0], "bid", math.inf), "candidates[0].bid"),
        (lambda r: setattr(r.candidates[2], "ad_id", -5), "candidates[2].ad_id"),
        (lambda r: setattr(r.candidates[1], "advertiser_id", -1), "candidates[1].advertiser_id"),
        (lambda r: setattr(r.candidates[0], "category", -1), "candidates[0].category"),
        (lambda r: setattr(r, "user_id", -1), "user_id"),
        (lambda r: setattr(r, "request_time_ms", NOW + 10**9), "request_time_ms"),
        (lambda r: setattr(r, "request_time_ms", -3), "request_time_ms"),
        (lambda r: setattr(r.context, "hour_of_day", 24), "context.hour_of_day"),
        (lambda r: r.candidates[1].dense_features.extend([1.0, math.nan]), "candidates[1].dense_features"),
        (lambda r: r.user.recent_categories.extend([1, -2]), "user.recent_categories[1]"),
        (lambda r: setattr(r.model, "version", 0), "model.version"),
        (lambda r: setattr(r, "request_id", "x" * 500), "request_id"),
    ],
)
def test_bad_fields_are_named(mutate, field):
    r = _req()
    mutate(r)
    with pytest.raises(InvalidRequest) as err:
        parse(r)
    assert str(err.value).startswith(field), str(err.value)


def test_candidate_limit_names_the_limit():
    with pytest.raises(InvalidRequest, match="exceed the limit of 5"):
        parse(_req(6), max_candidates=5)


def test_missing_time_defaults_to_server_time():
    r = _req()
    r.ClearField("request_time_ms")
    p = parse(r)
    assert p.request_time_ms == NOW and p.time_defaulted


@pytest.mark.parametrize(("mutate", "match"), [
    (lambda r: setattr(r.candidates[1], "bid", 3.5e38), r"candidates\[1\]\.bid: .*<= max_bid 1e\+06"),
    (lambda r: setattr(r.candidates[2], "bid", 1e6 + 1), r"candidates\[2\]\.bid: .*max_bid"),
    (lambda r: r.candidates[0].dense_features.extend([3.4e38]), r"candidates\[0\]\.dense_features: .*±max_abs_dense"),
    (lambda r: r.candidates[2].dense_features.extend([0.0, -2e6]), r"candidates\[2\]\.dense_features: .*1e\+06"),
])
def test_magnitudes_beyond_the_configured_limits_are_refused_naming_field_and_limit(mutate, match):
    r = _req()
    mutate(r)
    with pytest.raises(InvalidRequest, match=match):
        parse(r)


def test_limits_are_inclusive_and_configurable():
    r = _req()
    r.candidates[0].bid = 1e6
    r.candidates[1].dense_features.extend([-1e6, 1e6])
    assert parse(r).bid[0] == 1e6
    with pytest.raises(InvalidRequest, match="max_bid 10"):
        parse(r, max_bid=10.0)
    with pytest.raises(InvalidRequest, match="max_abs_dense_feature 100"):
        parse(r, max_abs_dense_feature=100.0)
