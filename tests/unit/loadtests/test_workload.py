"""loadtests.workload: candidate-count specs, Zipf users and the request pool."""

from __future__ import annotations

import numpy as np
import pytest

from loadtests.workload import LOAD_MIX, CandidateSpec, RequestPool, zipf_users
from models.vocab import DEVICE_TRAFFIC, PLACEMENT_TRAFFIC
from protos.adrank.v1 import ranking_pb2
from serving.client import UNIFORM_MIX, RequestMix, build_request


def _catalog(n_ads: int = 500, n_users: int = 50) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"ad_id": np.arange(n_ads) * 3, "advertiser_id": np.arange(n_ads) % 17, "campaign_id": np.arange(n_ads) % 41,
            "category": np.arange(n_ads) % 9, "bid": rng.uniform(0.5, 2.0, n_ads).astype(np.float32),
            "user_id": np.arange(n_users) * 7, "user_segment": np.arange(n_users) % 4,
            "user_recent": np.where(np.arange(5) < 3, np.arange(5), -1)[None].repeat(n_users, 0),
            "max_ts_ms": np.array([1_700_000_000_000])}


@pytest.mark.parametrize("spec,kind,low,high", [("200", "fixed", 200, 200), ("fixed:50", "fixed", 50, 50),
                                                 ("uniform:10:300", "uniform", 10, 300),
                                                 ("lognormal:150:0.5:20:400", "lognormal", 20, 400)])
def test_candidate_spec_parses_and_samples_within_bounds(spec: str, kind: str, low: int, high: int) -> None:
    parsed = CandidateSpec.parse(spec)
    assert (parsed.kind, parsed.low, parsed.high) == (kind, low, high)
    draw = parsed.sample(np.random.default_rng(1), 5000)
    assert draw.min() >= low and draw.max() <= high
    assert CandidateSpec.parse(str(parsed)) == parsed


def test_lognormal_centres_on_its_median() -> None:
    draw = CandidateSpec.parse("lognormal:150:0.3:1:1000").sample(np.random.default_rng(2), 20_000)
    assert 140 <= np.median(draw) <= 160


@pytest.mark.parametrize("bad", ["", "zero", "fixed:0", "uniform:5", "uniform:9:3", "lognormal:0:1:1:10", "poisson:3"])
def test_bad_candidate_specs_name_the_flag(bad: str) -> None:
    with pytest.raises(ValueError, match="--candidates"):
        CandidateSpec.parse(bad)


def test_zipf_users_are_skewed_and_from_the_catalog() -> None:
    users = np.arange(1000) + 10_000
    draw = zipf_users(users, 50_000, np.random.default_rng(3), exponent=1.1)
    assert np.isin(draw, users).all()
    _, counts = np.unique(draw, return_counts=True)
    top = np.sort(counts)[::-1]
    assert top[0] > 20 * np.median(top)  # a head of popular users, a long tail


def test_request_carries_catalog_ads_user_features_and_time() -> None:
    cat = _catalog()
    req = build_request(7, 120, cat, rng=np.random.default_rng(4), mix=LOAD_MIX, request_time_ms=1_700_000_000_001)
    assert req.request_time_ms == 1_700_000_000_001 and req.HasField("request_time_ms")
    assert len(req.candidates) == 120 and len({c.ad_id for c in req.candidates}) == 120
    index = {int(a): i for i, a in enumerate(cat["ad_id"])}
    for c in req.candidates:
        i = index[c.ad_id]
        assert (c.advertiser_id, c.campaign_id, c.category) == (cat["advertiser_id"][i], cat["campaign_id"][i],
                                                                cat["category"][i])
        assert 0.79 * cat["bid"][i] <= c.bid <= 1.21 * cat["bid"][i]
    assert req.user.segment == 1 and list(req.user.recent_categories) == [0, 1, 2]
    assert req.context.placement and req.context.device


def test_candidates_are_capped_by_the_catalog() -> None:
    req = build_request(0, 200, _catalog(n_ads=30), rng=np.random.default_rng(5), mix=LOAD_MIX, request_time_ms=1)
    assert len(req.candidates) == 30


def test_pool_cycles_serialized_requests_with_their_counts() -> None:
    pool = RequestPool.build(_catalog(), CandidateSpec.parse("uniform:5:40"), size=16, seed=6)
    seen = [pool.next() for _ in range(32)]
    assert seen[:16] == seen[16:]
    for payload, n in seen[:16]:
        req = ranking_pb2.ScoreRequest.FromString(payload)
        assert len(req.candidates) == n and 5 <= n <= 40
        assert req.request_time_ms == 1_700_000_000_001  # one past the catalog's last event


def test_load_generator_and_client_build_identical_requests() -> None:
    """The pool is the client's builder drawn from one generator: replaying the pool's draws through
    `build_request` gives byte-identical payloads, so a load test measures what `adrank score` sends."""
    cat, spec, seed = _catalog(), CandidateSpec.parse("uniform:5:40"), 8
    pool = RequestPool.build(cat, spec, size=12, seed=seed)
    rng = np.random.default_rng(seed)
    users = zipf_users(np.asarray(cat["user_id"]), 12, rng)
    counts = spec.sample(rng, 12)
    t = int(cat["max_ts_ms"][0]) + 1
    client = [build_request(int(u), int(n), cat, rng=rng, mix=LOAD_MIX, request_time_ms=t).SerializeToString()
              for u, n in zip(users, counts, strict=True)]
    assert pool.payloads == client


def test_seed_and_generator_give_the_same_request() -> None:
    cat = _catalog()
    for mix in (UNIFORM_MIX, LOAD_MIX):
        by_seed = build_request(14, 60, cat, seed=3, mix=mix, request_time_ms=5)
        by_rng = build_request(14, 60, cat, rng=np.random.default_rng(3), mix=mix, request_time_ms=5)
        assert by_seed == by_rng


def test_mixes_draw_only_traffic_values_with_their_shares() -> None:
    cat = _catalog(n_ads=20)
    rng = np.random.default_rng(9)
    weighted = [build_request(0, 1, cat, rng=rng, mix=LOAD_MIX).context.placement for _ in range(4000)]
    uniform = [build_request(0, 1, cat, rng=rng).context for _ in range(2000)]
    assert set(weighted) <= set(PLACEMENT_TRAFFIC) and {c.device for c in uniform} <= set(DEVICE_TRAFFIC)
    assert abs(weighted.count("feed") / len(weighted) - PLACEMENT_TRAFFIC["feed"]) < 0.03
    assert abs(sum(c.placement == "feed" for c in uniform) / len(uniform) - 1 / len(PLACEMENT_TRAFFIC)) < 0.04


def test_uniform_mix_keeps_catalog_bids() -> None:
    cat = _catalog()
    req = build_request(7, 50, cat, seed=1)
    index = {int(a): i for i, a in enumerate(cat["ad_id"])}
    assert all(c.bid == pytest.approx(float(cat["bid"][index[c.ad_id]])) for c in req.candidates)
    with pytest.raises(ValueError, match="bid_jitter"):
        RequestMix(bid_jitter=1.0)


def test_columns_pool_carries_the_same_candidates_as_the_rows_pool() -> None:
    from serving.columns import CANDIDATE_COLUMNS, DTYPES

    rows = RequestPool.build(_catalog(), CandidateSpec.parse("uniform:2:9"), size=6, seed=3)
    cols = RequestPool.build(_catalog(), CandidateSpec.parse("uniform:2:9"), size=6, seed=3, columns=True)
    assert cols.n_candidates == rows.n_candidates
    for row_bytes, col_bytes in zip(rows.payloads, cols.payloads, strict=True):
        r = ranking_pb2.ScoreRequest.FromString(row_bytes)
        c = ranking_pb2.ScoreColumnsRequest.FromString(col_bytes)
        assert (c.user_id, c.request_time_ms, c.context, c.user) == (r.user_id, r.request_time_ms, r.context, r.user)
        for name, dtype in CANDIDATE_COLUMNS:
            col = getattr(c.candidates, name)
            assert col.dtype == dtype and col.length == len(r.candidates)
            assert np.frombuffer(col.data, DTYPES[dtype]).tolist() == [getattr(x, name) for x in r.candidates]
