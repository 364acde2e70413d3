import numpy as np
import pytest

from models.data.synthetic import SyntheticConfig, generate_synthetic
from models.features import (
    DEVICES,
    PLACEMENTS,
    SPARSE_FIELDS,
    FeatureSpec,
    features_for_request,
    features_from_events,
    recent_categories_from_log,
)


@pytest.fixture(scope="module")
def events():
    return generate_synthetic(SyntheticConfig(n_events=20_000, seed=3))


def test_recent_categories_only_look_strictly_backwards():
    # user 1 clicks at t=10 (cat 5) and t=20 (cat 6, 7 at the same ms); user 2 clicks at t=15 (cat 9)
    user = np.array([1, 1, 1, 1, 2, 1])
    ts = np.array([10, 20, 20, 30, 15, 5])
    cat = np.array([5, 6, 7, 8, 9, 4])
    click = np.array([1, 1, 1, 0, 1, 0])
    rec = recent_categories_from_log(user, ts, cat, click, k=3)
    np.testing.assert_array_equal(rec[5], [-1, -1, -1])  # t=5: nothing before
    np.testing.assert_array_equal(rec[0], [-1, -1, -1])  # t=10: its own click is not visible
    np.testing.assert_array_equal(rec[1], [5, -1, -1])  # t=20: same-ms clicks not visible to each other
    np.testing.assert_array_equal(rec[2], [5, -1, -1])
    np.testing.assert_array_equal(rec[3], [7, 6, 5])  # t=30: newest first (ties in log order)
    np.testing.assert_array_equal(rec[4], [-1, -1, -1])  # other users' clicks never leak in


def test_recent_categories_match_a_brute_force_reference(events):
    rec = recent_categories_from_log(events["user_id"], events["ts_ms"], events["category"], events["click"], 4)
    rng = np.random.default_rng(0)
    for i in rng.choice(len(events), 200, replace=False):
        u, t = events["user_id"][i], events["ts_ms"][i]
        m = (events["user_id"] == u) & (events["ts_ms"] < t) & (events["click"] == 1)
        idx = np.flatnonzero(m)
        order = np.lexsort((idx, events["ts_ms"][idx]))[::-1]
        expect = list(events["category"][idx][order][:4]) + [-1] * 4
        assert list(rec[i]) == expect[:4], i


def test_online_and_offline_features_match_bit_for_bit(events):
    spec = FeatureSpec.from_cardinality(events.cardinality)
    offline = features_from_events(spec, events)
    recent = recent_categories_from_log(events["user_id"], events["ts_ms"], events["category"], events["click"],
                                        spec.recent_k)
    rng = np.random.default_rng(1)
    for i in rng.choice(len(events), 50, replace=False):
        online = features_for_request(
            spec, ad_id=events["ad_id"][i:i + 1], advertiser_id=events["advertiser_id"][i:i + 1],
            campaign_id=events["campaign_id"][i:i + 1], category=events["category"][i:i + 1],
            bid=events["bid"][i:i + 1].astype(np.float64), placement=int(events["placement"][i]),
            device=int(events["device"][i]), hour=int(events["hour"][i]), user_segment=int(events["user_segment"][i]),
            recent_categories=recent[i][recent[i] >= 0])
        for k in ("sparse", "recent", "dense"):
            assert online[k].dtype == offline[k].dtype
            np.testing.assert_array_equal(online[k][0], offline[k][i], err_msg=k)


def test_unknown_ids_go_to_the_oov_slot_and_stay_in_range(events):
    spec = FeatureSpec.from_cardinality(events.cardinality)
    f = features_for_request(spec, ad_id=np.array([10**12, 0]), advertiser_id=np.array([0, 0]),
                             campaign_id=np.array([0, 0]), category=np.array([10**6, 1]), bid=np.array([1.0, 2.0]),
                             placement=0, device=0, hour=0, user_segment=10**6,
                             recent_categories=np.array([10**6, 3]))
    assert f["sparse"].max() < spec.vocab_size and f["recent"].max() < spec.vocab_size
    ad_col = SPARSE_FIELDS.index("ad_id")
    assert f["sparse"][0, ad_col] == spec.offsets[ad_col] + spec.field_sizes[ad_col]  # OOV slot
    assert f["sparse"][1, ad_col] == spec.offsets[ad_col]
    assert spec.vocab_size == spec.recent_offset + spec.n_categories + 1


def test_spec_roundtrip_and_context_vocab(events):
    spec = FeatureSpec.from_cardinality(events.cardinality)
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    assert spec.field_sizes[SPARSE_FIELDS.index("placement")] >= len(PLACEMENTS)
    assert spec.field_sizes[SPARSE_FIELDS.index("device")] >= len(DEVICES)
    with pytest.raises(ValueError, match="fields"):
        FeatureSpec.from_dict({**spec.to_dict(), "fields": ["ad_id"]})


def test_too_many_dense_features_refused(events):
    spec = FeatureSpec.from_cardinality(events.cardinality)
    with pytest.raises(ValueError, match="limit"):
        features_for_request(spec, ad_id=np.array([1]), advertiser_id=np.array([1]), campaign_id=np.array([1]),
                             category=np.array([1]), bid=np.array([1.0]), placement=0, device=0, hour=0,
                             user_segment=0, recent_categories=np.array([], np.int64),
                             extra_dense=np.ones((1, spec.dense_width + 5), np.float32))
