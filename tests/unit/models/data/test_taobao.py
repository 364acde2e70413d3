"""TaobaoAd_x1 loader on small fixture CSVs written in the exact BARS/FuxiCTR column layout."""

import csv
from pathlib import Path

import numpy as np
import pytest

from models.data.schema import EVENT_COLUMNS
from models.data.taobao import REQUIRED_COLUMNS, TAOBAO_X1_COLUMNS, TS_BASE_MS, load_taobao

PIDS = ("430548_1007", "430539_1007")


def _rows(n: int, seed: int) -> list[dict[str, str]]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        his_len = int(rng.integers(0, 6))
        rows.append({
            "clk": str(int(rng.random() < 0.3)),
            "btag_his": "^".join(["1"] * his_len),
            "cate_his": "^".join(str(c) for c in rng.integers(1, 9000, his_len)),
            "brand_his": "^".join(str(b) for b in rng.integers(1, 9000, his_len)),
            "userid": str(int(rng.choice([17, 42, 1000, 99_999, 5]))),
            "cms_segid": "0",
            "cms_group_id": str(int(rng.integers(0, 13))),
            "final_gender_code": str(int(rng.integers(1, 3))),
            "age_level": str(int(rng.integers(0, 7))),
            "pvalue_level": str(int(rng.integers(0, 4))),
            "shopping_level": "3",
            "occupation": "0",
            "new_user_class_level": str(int(rng.integers(0, 5))),
            "adgroup_id": str(int(rng.choice([63133, 1, 500, 777]))),
            "cate_id": str(int(rng.choice([6406, 4520, 12]))),
            "campaign_id": str(int(rng.choice([83237, 11, 300]))),
            "customer": str(int(rng.choice([1, 2, 95471]))),
            "brand": str(int(rng.integers(1, 100))),
            "price": f"{rng.uniform(1, 500):.1f}",
            "pid": str(rng.choice(PIDS)),
            "btag": "1",
        })
    return rows


def _write(path: Path, rows: list[dict[str, str]], columns=TAOBAO_X1_COLUMNS) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def _dense(raw: list[str]) -> np.ndarray:
    """Reference dense remap: rank of the raw value among sorted unique values."""
    values = np.array([float(v) for v in raw])
    return np.searchsorted(np.unique(values), values)


def test_single_file_mapping_dtypes_and_order(tmp_path):
    rows = _rows(40, seed=0)
    e = load_taobao(_write(tmp_path / "sample.csv", rows))
    assert len(e) == 40 and e.source == "taobao"
    for name, dtype in EVENT_COLUMNS.items():
        assert e[name].dtype == dtype, name
    # no time column in the layout: ts is the file position, so the log keeps file order
    np.testing.assert_array_equal(e["ts_ms"], TS_BASE_MS + np.arange(40))
    assert np.all(np.diff(e["ts_ms"]) > 0)
    col = {c: [r[c] for r in rows] for c in TAOBAO_X1_COLUMNS}
    np.testing.assert_array_equal(e["user_id"], _dense(col["userid"]))
    np.testing.assert_array_equal(e["ad_id"], _dense(col["adgroup_id"]))
    np.testing.assert_array_equal(e["advertiser_id"], _dense(col["customer"]))
    np.testing.assert_array_equal(e["campaign_id"], _dense(col["campaign_id"]))
    np.testing.assert_array_equal(e["category"], _dense(col["cate_id"]))
    np.testing.assert_array_equal(e["placement"], [sorted(PIDS).index(p) for p in col["pid"]])
    assert "^" in "".join(col["cate_his"])  # the fixture really carries '^'-separated sequences
    gender, age = _dense(col["final_gender_code"]), _dense(col["age_level"])
    n_age = len(set(col["age_level"]))
    np.testing.assert_array_equal(e["user_segment"], gender * n_age + age)
    np.testing.assert_allclose(e["bid"], np.array(col["price"], dtype=np.float32))
    np.testing.assert_array_equal(e["click"], np.array(col["clk"], dtype=np.int8))
    assert not e["conversion"].any()
    assert np.isnan(e["p_click"]).all() and np.isnan(e["p_conversion"]).all()
    assert not e["device"].any() and not e["hour"].any()
    assert e.cardinality["user_id"] == len(set(col["userid"]))
    for name, card in e.cardinality.items():
        assert e[name].max() < card, name
    assert e.meta["file_rows"] == {"sample.csv": 40}


def test_directory_reads_train_then_test_and_caps_rows(tmp_path):
    _write(tmp_path / "train.csv", _rows(30, seed=1))
    _write(tmp_path / "test.csv", _rows(12, seed=2))
    e = load_taobao(tmp_path)
    assert len(e) == 42 and e.meta["file_rows"] == {"train.csv": 30, "test.csv": 12}
    # every test.csv row is later than every train.csv row: the benchmark's split is a time split
    assert e["ts_ms"][:30].max() < e["ts_ms"][30:].min()
    capped = load_taobao(tmp_path, max_rows=35)
    assert len(capped) == 35 and capped.meta["file_rows"] == {"train.csv": 30, "test.csv": 5}


def test_columns_in_any_order_and_empty_fields(tmp_path):
    rows = _rows(20, seed=3)
    rows[0]["price"] = ""
    e = load_taobao(_write(tmp_path / "x.csv", rows, columns=tuple(reversed(TAOBAO_X1_COLUMNS))))
    assert len(e) == 20 and e["bid"][0] == 0.0


def test_missing_columns_named_in_error(tmp_path):
    cols = tuple(c for c in TAOBAO_X1_COLUMNS if c not in ("customer", "pid"))
    path = _write(tmp_path / "bad.csv", _rows(20, seed=4), columns=cols)
    with pytest.raises(ValueError, match=r"missing columns \['customer', 'pid'\]"):
        load_taobao(path)


def test_missing_path_and_empty_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_taobao(tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match="train.csv"):
        load_taobao(tmp_path)


def test_required_columns_are_in_the_benchmark_layout():
    assert set(REQUIRED_COLUMNS) <= set(TAOBAO_X1_COLUMNS)


def test_short_row_is_a_clear_error(tmp_path):
    path = _write(tmp_path / "short.csv", _rows(20, seed=5))
    with open(path, "a") as fh:
        fh.write("1,,,,17\n")
    with pytest.raises(ValueError, match="fewer fields than the header"):
        load_taobao(path)
