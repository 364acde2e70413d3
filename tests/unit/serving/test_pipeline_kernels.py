"""The compiled pipeline kernels give exactly what their numpy references give: model inputs bit for bit
equal to training's `assemble`, the same ranking and expected values, the same yes/no on limits (and so
the same error messages), on random requests with out-of-vocabulary ids, wide and empty dense features,
ties and non-finite scores; and requests scored on many threads at once never see each other's data."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import serving_fakes as fakes

from models.features import FeatureSpec, assemble
from serving.config import ServerConfig
from serving.errors import InvalidRequest
from serving.finite import NonFiniteScore
from serving.pipeline import RequestContext, Scores, WithHistory
from serving.pipeline.decode import decode_rows
from serving.pipeline.features import FeaturesStage, model_inputs, reference_inputs
from serving.pipeline.kernels import KERNELS
from serving.pipeline.rank import RankStage, reference_ranking
from serving.pipeline.validate import validate_request
from serving.validation import parse_request

pytestmark = pytest.mark.skipif(KERNELS is None, reason="numba is not installed: the stages run numpy only")

SPEC = FeatureSpec((50, 20, 30, 10, 6, 4, 24, 8), recent_k=5, dense_width=4)


def _parsed(rng: np.random.Generator, n: int, *, dense: int = 0, recent: int = 3):
    """A validated request with ids in and out of every field's vocabulary, as either wire decodes it."""
    req = fakes.request(n)
    parsed = parse_request(req, ServerConfig(), "vm", now_ms=fakes.NOW_MS)
    ids = {f: rng.integers(0, 2 * s, n) for f, s in zip(("ad_id", "advertiser_id", "campaign_id", "category"),
                                                          SPEC.field_sizes, strict=False)}
    return parsed.__class__(**{
        **{f: getattr(parsed, f) for f in parsed.__slots__}, **ids,
        "bid": rng.random(n) * 50.0, "hour": int(rng.integers(0, 24)), "segment": int(rng.integers(0, 20)),
        "recent_categories": rng.integers(0, 2 * SPEC.n_categories, recent),
        "dense": rng.normal(size=(n, dense)).astype(np.float32)})


def _handle():
    h = fakes.handle()
    return h.__class__(h.name, h.version, h.manifest, SPEC)


@pytest.mark.parametrize("dense", [0, 1, 3])
@pytest.mark.parametrize("recent", [0, 2, 5, 9])
def test_model_inputs_equal_training_assemble_bit_for_bit(dense, recent):
    rng = np.random.default_rng(dense * 10 + recent)
    for n in (1, 7, 200):
        parsed, handle = _parsed(rng, n, dense=dense, recent=recent), _handle()
        got = model_inputs(parsed, handle)
        ref = reference_inputs(parsed, handle)
        # training's own assembly over the same rows: what offline evaluation and training feed the model
        cols = {"ad_id": parsed.ad_id, "advertiser_id": parsed.advertiser_id, "campaign_id": parsed.campaign_id,
                "category": parsed.category, "placement": ref["sparse"][0, 4] - SPEC.offsets[4],
                "device": ref["sparse"][0, 5] - SPEC.offsets[5], "hour": parsed.hour, "user_segment": parsed.segment}
        offline = assemble(SPEC, cols, np.broadcast_to(parsed.recent_categories, (n, recent)),
                           parsed.bid.astype(np.float32), parsed.dense if dense else None)
        for name in ("sparse", "recent", "dense"):
            for want in (ref[name], offline[name]):
                assert got[name].dtype == want.dtype and got[name].shape == want.shape
                assert got[name].tobytes() == want.tobytes(), name


def test_read_only_column_views_assemble_like_writable_rows():
    rng = np.random.default_rng(3)
    parsed, handle = _parsed(rng, 50, dense=2), _handle()
    frozen = {}
    for f in ("ad_id", "advertiser_id", "campaign_id", "bid", "dense"):  # as np.frombuffer hands them out
        a = getattr(parsed, f).copy()
        a.flags.writeable = False
        frozen[f] = a
    ro = parsed.__class__(**{**{f: getattr(parsed, f) for f in parsed.__slots__}, **frozen})
    for name, value in model_inputs(ro, handle).items():
        assert value.tobytes() == reference_inputs(parsed, handle)[name].tobytes()


def test_too_many_dense_features_refused_as_assemble_does():
    parsed, handle = _parsed(np.random.default_rng(1), 4, dense=SPEC.max_extra_dense + 1), _handle()
    with pytest.raises(ValueError, match="4 dense features exceed the model's limit of 3"):
        model_inputs(parsed, handle)
    with pytest.raises(ValueError, match="4 dense features exceed the model's limit of 3"):
        reference_inputs(parsed, handle)


def _scores(parsed, p_ctr, p_cvr):
    return Scores(parsed, _handle(), "embedded", p_ctr.astype(np.float32), p_cvr.astype(np.float32))


@pytest.mark.parametrize("top_k", [None, 1, 5, 1000])
def test_ranking_equals_the_reference(top_k):
    rng = np.random.default_rng(7)
    parsed = _parsed(rng, 200)
    parsed = parsed.__class__(**{**{f: getattr(parsed, f) for f in parsed.__slots__}, "top_k": top_k,
                                 "bid": np.round(parsed.bid)})  # whole bids: many equal expected values
    p = np.round(rng.random(200), 1)  # ties keep request order in both
    scores = _scores(parsed, p, p[::-1].copy())
    got = asyncio.run(RankStage()(scores, RequestContext.begin()))
    want = reference_ranking(scores)
    for name in ("ad_id", "request_index", "p_ctr", "p_cvr", "expected_value", "all_expected_value"):
        g, w = getattr(got, name), getattr(want, name)
        assert g.dtype == w.dtype and g.tobytes() == w.tobytes(), name


@pytest.mark.parametrize("where", ["p_ctr", "p_cvr", "ev"])
def test_a_non_finite_score_is_refused_with_the_reference_message(where):
    parsed = _parsed(np.random.default_rng(2), 6)
    p_ctr, p_cvr = np.full(6, 0.5), np.full(6, 0.5)
    if where == "ev":
        parsed = parsed.__class__(**{**{f: getattr(parsed, f) for f in parsed.__slots__},
                                     "bid": np.array([1, 1, 1, 1, 1e308, 1.0])})
        p_ctr[4] = 3e38  # finite float32, but bid × p_ctr overflows float64
    else:
        (p_ctr if where == "p_ctr" else p_cvr)[4] = np.nan
    scores = _scores(parsed, p_ctr, p_cvr)
    with pytest.raises(NonFiniteScore) as got:
        asyncio.run(RankStage()(scores, RequestContext.begin()))
    with pytest.raises(NonFiniteScore) as want:
        reference_ranking(scores)
    assert str(got.value) == str(want.value) and "candidates[4]" in str(got.value)


BAD = [  # (field to break, value): each is refused by validate, the kernel must say "no" and the message match
    ("ad_id", -1), ("advertiser_id", -3), ("campaign_id", -2), ("category", -5), ("bid", np.nan), ("bid", np.inf),
    ("bid", -0.5), ("bid", 1e12), ("dense", np.nan), ("dense", 1e30), ("recent_categories", -1)]


def _decoded_with_dense():
    config = ServerConfig()
    req = fakes.request(5)
    for c in req.candidates:
        c.dense_features.extend([0.5, -0.5])
    return decode_rows(req, max_candidates=config.max_candidates, max_dense_features=config.max_dense_features)


def _kernel_says(decoded, config) -> bool:
    return KERNELS.candidates_ok(decoded.recent_categories, decoded.ad_id, decoded.advertiser_id,
                                 decoded.campaign_id, decoded.category, decoded.bid, decoded.dense,
                                 float(config.max_bid), float(config.max_abs_dense_feature))


def _broken(decoded, field: str, value):
    """A copy of `decoded` with one bad value in `field` (row 3 of dense, row 1 of the others)."""
    arr = getattr(decoded, field).copy()
    if field == "dense":
        arr[3, 1] = value
    else:
        arr[1] = value
    return decoded.__class__(**{**{f: getattr(decoded, f) for f in decoded.__slots__}, field: arr})


@pytest.mark.parametrize(("field", "value"), BAD)
def test_candidates_ok_says_no_exactly_when_the_numpy_checks_refuse(field, value):
    config, decoded = ServerConfig(), _decoded_with_dense()
    assert _kernel_says(decoded, config)
    validate_request(decoded, config, "vm", now_ms=fakes.NOW_MS)  # the unbroken request passes
    bad = _broken(decoded, field, value)
    assert not _kernel_says(bad, config)
    with pytest.raises(InvalidRequest) as got:
        validate_request(bad, config, "vm", now_ms=fakes.NOW_MS)
    where = {"dense": "candidates[3].dense_features", "recent_categories": "user.recent_categories[1]"}
    assert str(got.value).startswith(where.get(field, f"candidates[1].{field}: must be"))


def test_validate_messages_are_the_numpy_reference_messages(monkeypatch):
    """With the kernel switched off, every refusal above reads exactly the same."""
    import serving.pipeline.validate as validate

    config = ServerConfig()
    for field, value in BAD:
        decoded = _decoded_with_dense()
        bad = _broken(decoded, field, value)
        with pytest.raises(InvalidRequest) as fast:
            validate_request(bad, config, "vm", now_ms=fakes.NOW_MS)
        monkeypatch.setattr(validate, "KERNELS", None)
        with pytest.raises(InvalidRequest) as ref:
            validate_request(bad, config, "vm", now_ms=fakes.NOW_MS)
        monkeypatch.undo()
        assert str(fast.value) == str(ref.value)


def test_concurrent_requests_never_see_each_others_inputs():
    """Outputs are allocated per call: 4 threads × 200 requests of different candidates each get their own."""
    handle, errors = _handle(), []
    stage = FeaturesStage()

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(200):
            parsed = _parsed(rng, int(rng.integers(1, 300)), dense=int(rng.integers(0, 4)))
            got = asyncio.run(stage(WithHistory(parsed, handle, None), RequestContext.begin())).tensors
            want = reference_inputs(parsed, handle)
            if any(got[k].tobytes() != want[k].tobytes() for k in want):
                errors.append(seed)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_generated_request_ids_are_uuid4_hex():
    import uuid

    from serving.pipeline.validate import new_request_id

    ids = {new_request_id() for _ in range(2000)}
    assert len(ids) == 2000
    for rid in ids:
        u = uuid.UUID(hex=rid)
        assert u.version == 4 and u.variant == uuid.RFC_4122 and u.hex == rid


def test_served_features_equal_offline_training_features_bit_for_bit():
    """Training's features for logged events (`features_from_events`) and the compiled serving pass over
    the same events as one-candidate requests: the parity test of tests/unit/models/test_features.py,
    through the kernel."""
    from models.data.synthetic import SyntheticConfig, generate_synthetic
    from models.features import features_from_events, recent_categories_from_log
    from serving.pipeline.features import compiled_features

    events = generate_synthetic(SyntheticConfig(n_events=10_000, seed=4))
    spec = FeatureSpec.from_cardinality(events.cardinality)
    offline = features_from_events(spec, events)
    recent = recent_categories_from_log(events["user_id"], events["ts_ms"], events["category"], events["click"],
                                        spec.recent_k)
    for i in np.random.default_rng(1).choice(len(events), 100, replace=False):
        online = compiled_features(
            spec, ad_id=events["ad_id"][i:i + 1].astype(np.int64),
            advertiser_id=events["advertiser_id"][i:i + 1].astype(np.int64),
            campaign_id=events["campaign_id"][i:i + 1].astype(np.int64),
            category=events["category"][i:i + 1].astype(np.int64),
            bid=events["bid"][i:i + 1].astype(np.float64), placement=int(events["placement"][i]),
            device=int(events["device"][i]), hour=int(events["hour"][i]), user_segment=int(events["user_segment"][i]),
            recent_categories=recent[i][recent[i] >= 0])
        for k in ("sparse", "recent", "dense"):
            assert online[k].dtype == offline[k].dtype
            assert online[k][0].tobytes() == offline[k][i].tobytes(), k


def test_argument_types_never_compiled_take_the_numpy_reference_without_compiling():
    """A replayed log's int32 ids or a strided view: no compile inside a request, the reference's answer."""
    rng = np.random.default_rng(9)
    parsed, handle = _parsed(rng, 30, dense=2), _handle()
    odd = parsed.__class__(**{**{f: getattr(parsed, f) for f in parsed.__slots__},
                              "ad_id": parsed.ad_id.astype(np.int32), "bid": np.repeat(parsed.bid, 2)[::2]})
    KERNELS.warm()
    compiled = [len(k.signatures) for k in (KERNELS.candidates_ok, KERNELS.assemble_request, KERNELS.rank_request)]
    got = model_inputs(odd, handle)
    for name, value in reference_inputs(odd, handle).items():
        assert got[name].tobytes() == value.tobytes()
    p = rng.random(30).astype(np.float32)
    ranked = asyncio.run(RankStage()(Scores(odd, handle, "embedded", p, p.copy()), RequestContext.begin()))
    want = reference_ranking(Scores(odd, handle, "embedded", p, p))
    assert ranked.request_index.tolist() == want.request_index.tolist()
    config, decoded = ServerConfig(), _decoded_with_dense()
    strided = decoded.__class__(**{**{f: getattr(decoded, f) for f in decoded.__slots__},
                                   "bid": np.repeat(decoded.bid, 2)[::2]})
    assert validate_request(strided, config, "vm", now_ms=fakes.NOW_MS).bid.tolist() == decoded.bid.tolist()
    assert [len(k.signatures) for k in (KERNELS.candidates_ok, KERNELS.assemble_request,
                                        KERNELS.rank_request)] == compiled  # nothing compiled meanwhile


def test_read_only_scores_as_triton_returns_them_use_the_compiled_ranking():
    parsed = _parsed(np.random.default_rng(5), 40)
    p_ctr, p_cvr = (np.frombuffer(np.random.default_rng(s).random(40, dtype=np.float32).tobytes(), np.float32)
                    for s in (1, 2))  # read-only views, as tritonclient's as_numpy gives
    scores = Scores(parsed, _handle(), "triton", p_ctr, p_cvr)
    KERNELS.warm()
    compiled = len(KERNELS.rank_request.signatures)
    got = asyncio.run(RankStage()(scores, RequestContext.begin()))
    assert got.expected_value.tobytes() == reference_ranking(scores).expected_value.tobytes()
    assert len(KERNELS.rank_request.signatures) == compiled
