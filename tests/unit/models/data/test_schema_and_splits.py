import numpy as np
import pytest

from models.data import EventLog, SchemaError, load_dataset, per_user_chronological_split, time_split
from models.data.schema import empty_columns
from models.data.synthetic import SyntheticConfig, generate_synthetic


def _small(seed: int = 0) -> EventLog:
    return generate_synthetic(SyntheticConfig(n_events=20_000, seed=seed))


def test_synthetic_is_seeded():
    a, b, c = _small(1), _small(1), _small(2)
    for col in ("user_id", "ts_ms", "ad_id", "click", "p_click"):
        np.testing.assert_array_equal(a[col], b[col])
    assert not np.array_equal(a["ad_id"], c["ad_id"])


def test_synthetic_schema_and_ground_truth():
    e = _small()
    assert len(e) == 20_000
    assert np.all(np.diff(e["ts_ms"]) >= 0), "events must be time sorted"
    assert e.has_ground_truth
    assert np.all((e["p_click"] > 0) & (e["p_click"] < 1))
    assert np.all(e["conversion"] <= e["click"])
    for col, card in e.cardinality.items():
        assert e[col].max() < card, col
    # labels are drawn from the recorded probabilities: the empirical rate matches their mean
    assert abs(e["click"].mean() - e["p_click"].mean()) < 0.01


def test_synthetic_size_limits():
    with pytest.raises(ValueError, match="n_events"):
        generate_synthetic(SyntheticConfig(n_events=10))


def test_schema_rejects_bad_tables():
    cols = empty_columns(3)
    cols["user_id"][:] = [1, -1, 2]
    with pytest.raises(SchemaError, match="user_id"):
        EventLog(cols, {}, "t")
    cols = empty_columns(3)
    cols["conversion"][0] = 1
    with pytest.raises(SchemaError, match="conversion without a click"):
        EventLog(cols, {}, "t")
    cols = empty_columns(3)
    del cols["bid"]
    with pytest.raises(SchemaError, match="bid"):
        EventLog(cols, {}, "t")


def test_save_load_roundtrip(tmp_path):
    e = _small()
    e.save(tmp_path / "e.npz")
    back = EventLog.load(tmp_path / "e.npz")
    assert dict(back.cardinality) == dict(e.cardinality)
    np.testing.assert_array_equal(back["ts_ms"], e["ts_ms"])


def test_time_split_has_no_leakage():
    e = _small()
    train, test = time_split(e, 0.2)
    assert len(train) + len(test) == len(e)
    assert train["ts_ms"].max() < test["ts_ms"].min()
    assert 0.15 < len(test) / len(e) < 0.25


def test_time_split_with_tied_timestamps_keeps_ties_together():
    e = _small()
    cols = {k: v.copy() for k, v in e.columns.items()}
    cols["ts_ms"] = (cols["ts_ms"] // 86_400_000) * 86_400_000  # many events per identical timestamp
    tied = EventLog(cols, e.cardinality, e.source).sorted_by_time()
    train, test = time_split(tied, 0.2)
    assert train["ts_ms"].max() < test["ts_ms"].min()


def test_per_user_split_is_strictly_chronological_per_user():
    e = _small()
    cols = {k: v.copy() for k, v in e.columns.items()}
    cols["ts_ms"] = (cols["ts_ms"] // 3_600_000_0) * 3_600_000_0  # ties within users
    tied = EventLog(cols, e.cardinality, e.source)
    train, test = per_user_chronological_split(tied, 0.1)
    assert len(train) + len(test) == len(tied)
    last_train = {}
    for u, t in zip(train["user_id"], train["ts_ms"], strict=True):
        last_train[u] = max(t, last_train.get(u, t))
    for u, t in zip(test["user_id"], test["ts_ms"], strict=True):
        assert u not in last_train or last_train[u] < t


def test_load_dataset_unknown_source():
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("criteo")
