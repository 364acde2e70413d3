"""The vectorised record conversion: the same rows as a row-by-row build, the same verdicts as `check`."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from models.data.requestlog import (
    REQUEST_LOG_SCHEMA,
    RequestLogError,
    RequestRecord,
    check_records,
    records_to_batch,
    records_to_table,
)
from tests.requestlog_fixtures import make_record

_LISTS = ("recent_categories", "ad_id", "advertiser_id", "campaign_id", "category", "bid", "p_ctr", "p_cvr",
          "expected_value", "order", "p_ctr_no_history", "p_cvr_no_history", "p_ctr_shadow", "p_cvr_shadow")


def _row(r: RequestRecord, logged_at_ms: int) -> dict:
    """A record as one row of Python values, built field by field (the reference for the batch build)."""
    row = {f.name: getattr(r, f.name) for f in REQUEST_LOG_SCHEMA if f.name not in ("dense_features", "stage_us")}
    for name in _LISTS:
        row[name] = np.asarray(getattr(r, name)).tolist()
    row["flags"] = list(r.flags)
    row["stage_us"] = list(r.stage_us.items())
    row["logged_at_ms"] = r.logged_at_ms or logged_at_ms
    n = len(r.ad_id)
    row["dense_features"] = [[] for _ in range(n)] if r.dense_features is None else \
        np.asarray(r.dense_features, np.float32).tolist()
    return row


def _records() -> list[RequestRecord]:
    rng = np.random.default_rng(3)
    out = [make_record("plain"), make_record("lists", n=3, bid=[1, 2, 3], order=[2, 0], recent_categories=[7]),
           make_record("empty", ad_ids=[], order=np.empty(0, np.int32), flags=[], stage_us={}),
           make_record("dense", n=3, dense_features=rng.random((3, 2), dtype=np.float32), logged_at_ms=55),
           make_record("no-history", n=2, p_ctr_no_history=[0.5, 0.25], p_cvr_no_history=np.ones(2, np.float32)),
           make_record("shadow", n=2, shadow_model_version=3, p_ctr_shadow=[0.1, 0.2], p_cvr_shadow=[0.3, 0.4],
                       flags=["A", "B"], stage_us={"infer": 7, "rank": 1, "encode": 2})]
    out += [make_record(f"r{i}", n=int(rng.integers(1, 60)), user_id=int(rng.integers(0, 1 << 40))) for i in range(40)]
    return out


def test_a_batch_holds_the_rows_a_field_by_field_build_holds() -> None:
    records = _records()
    batch = records_to_batch(records, logged_at_ms=1234)
    assert batch.schema.equals(REQUEST_LOG_SCHEMA)
    expected = pa.Table.from_pylist([_row(r, 1234) for r in records], schema=REQUEST_LOG_SCHEMA)
    assert pa.Table.from_batches([batch]).equals(expected)
    assert records_to_table(records).column("logged_at_ms").to_pylist()[3] == 55  # no wall clock given: kept as is
    assert records_to_table(records).column("logged_at_ms").to_pylist()[0] == 0


BAD = [
    {"bid": [1.0]}, {"p_cvr": [0.1] * 5}, {"order": [0, 0]}, {"order": [4]}, {"order": [-1]},
    {"dense_features": np.zeros((3, 2), np.float32)}, {"dense_features": np.zeros(4, np.float32)},
    {"user_id": -1}, {"request_time_ms": -5}, {"model_version": -1}, {"request_id": ""},
    {"p_ctr_no_history": [0.1]}, {"shadow_model_version": 2},
    {"shadow_model_version": 2, "p_ctr_shadow": [0.1] * 4, "p_cvr_shadow": [0.1] * 3},
    {"p_ctr_shadow": [0.1] * 4, "p_cvr_shadow": [0.1] * 4},
]


def _passes(record: RequestRecord) -> bool:
    try:
        record.check()
    except RequestLogError:
        return False
    return True


def test_the_batch_check_agrees_with_check_record_by_record() -> None:
    records = [make_record(f"ok{i}", n=4) for i in range(5)]
    records += [make_record(override.pop("request_id", f"bad{i}"), n=4, **override)
                for i, override in enumerate(dict(b) for b in BAD)]
    records += [make_record("ok-last", n=4, order=[3, 1])]
    order = np.random.default_rng(0).permutation(len(records))
    records = [records[i] for i in order]
    mask = check_records(records)
    assert mask.tolist() == [_passes(r) for r in records]
    assert mask.sum() == 6 and check_records([]).size == 0


def test_a_value_no_batch_rule_can_judge_raises_for_the_caller_to_go_record_by_record() -> None:
    with pytest.raises(TypeError):
        check_records([make_record("a"), make_record("b", ad_id=5)])
