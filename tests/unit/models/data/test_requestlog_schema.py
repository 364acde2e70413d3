"""The request-log record and the label file: round trips, checks that name the field, confined reads."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from models.data.labels import LabelError, labels_table, read_labels, write_labels
from models.data.requestlog import (
    REQUEST_LOG_SCHEMA,
    RequestLogError,
    read_request_log,
    records_to_table,
    request_log_files,
)
from tests.requestlog_fixtures import make_record


def test_records_round_trip_through_parquet(tmp_path: Path) -> None:
    dense = np.arange(12, dtype=np.float32).reshape(4, 3)
    records = [make_record("a", dense_features=dense), make_record("b", n=2, flags=[], stage_us={})]
    pq.write_table(records_to_table(records), tmp_path / "x.parquet")
    table = read_request_log(tmp_path)
    assert table.schema.equals(REQUEST_LOG_SCHEMA, check_metadata=False)
    rows = table.to_pylist()
    assert [r["request_id"] for r in rows] == ["a", "b"]
    a, b = rows
    assert a["ad_id"] == [10, 11, 12, 13] and a["advertiser_id"] == [100, 101, 102, 103]
    assert a["dense_features"] == dense.tolist() and b["dense_features"] == [[], []]
    assert dict(a["stage_us"]) == {"features": 40, "infer": 300} and b["stage_us"] == []
    assert a["order"] == [3, 2, 1, 0] and a["flags"] == ["FLAG_USER_HISTORY_MISSING"]
    assert (a["placement"], a["device"], a["hour"], a["user_segment"]) == (1, 2, 5, 3)
    assert a["snapshot_id"] == "snap-9" and a["rollout_arm"] == "control" and a["model_version"] == 2
    np.testing.assert_array_equal(np.array(a["p_ctr"], np.float32), np.linspace(0.01, 0.05, 4, dtype=np.float32))


@pytest.mark.parametrize("override,field", [
    ({"bid": [1.0]}, "bid"),
    ({"p_cvr": [0.1] * 5}, "p_cvr"),
    ({"order": [0, 0]}, "order"),
    ({"order": [4]}, "order"),
    ({"dense_features": np.zeros((3, 2), np.float32)}, "dense_features"),
    ({"user_id": -1}, "user_id"),
])
def test_check_names_the_bad_field(override: dict, field: str) -> None:
    with pytest.raises(RequestLogError, match=field):
        make_record("r", **override).check()


def test_check_refuses_an_empty_request_id() -> None:
    with pytest.raises(RequestLogError, match="request_id"):
        make_record("").check()


def test_reads_only_complete_files_of_the_folder(tmp_path: Path) -> None:
    assert read_request_log(tmp_path).num_rows == 0
    pq.write_table(records_to_table([make_record("a")]), tmp_path / "requests-1.parquet")
    (tmp_path / ".requests-2.parquet.tmp").write_bytes(b"PAR1 half a file")
    assert [p.name for p in request_log_files(tmp_path)] == ["requests-1.parquet"]
    assert read_request_log(tmp_path, columns=["request_id"]).column("request_id").to_pylist() == ["a"]


def test_refuses_links_out_of_the_folder_and_foreign_files(tmp_path: Path) -> None:
    logs, outside = tmp_path / "logs", tmp_path / "outside.parquet"
    logs.mkdir()
    pq.write_table(records_to_table([make_record("a")]), outside)
    os.symlink(outside, logs / "escape.parquet")
    with pytest.raises(RequestLogError, match="outside"):
        read_request_log(logs)
    other = tmp_path / "other"
    other.mkdir()
    pq.write_table(pa.table({"request_id": ["a"]}), other / "x.parquet")
    with pytest.raises(RequestLogError, match="schema tag"):
        read_request_log(other)
    with pytest.raises(RequestLogError, match="does not exist"):
        read_request_log(tmp_path / "missing")


def test_labels_round_trip_atomically(tmp_path: Path) -> None:
    table = labels_table(["r1", "r1"], [5, 5], [100, 100], ["impression", "click"], [100, 4_100])
    path = write_labels(tmp_path / "labels.parquet", table)
    assert [p.name for p in tmp_path.iterdir()] == ["labels.parquet"]  # no temp file left behind
    assert read_labels(path).to_pylist()[1] == {"request_id": "r1", "ad_id": 5, "impression_ms": 100,
                                                 "event": "click", "event_ms": 4_100}
    with pytest.raises(LabelError, match="unknown label events"):
        labels_table(["r1"], [5], [100], ["view"], [100])
    with pytest.raises(LabelError, match="lacks column 'event_ms'"):
        read_labels(table.drop_columns(["event_ms"]))


def test_no_history_scores_round_trip_and_default_to_empty_lists(tmp_path: Path) -> None:
    masked = np.array([0.5, 0.25, 0.125, 1.0], np.float32)
    records = [make_record("a", p_ctr_no_history=masked, p_cvr_no_history=masked / 2), make_record("b", n=2)]
    pq.write_table(records_to_table(records), tmp_path / "x.parquet")
    a, b = read_request_log(tmp_path).to_pylist()
    assert a["p_ctr_no_history"] == masked.tolist() and a["p_cvr_no_history"] == (masked / 2).tolist()
    assert b["p_ctr_no_history"] == [] and b["p_cvr_no_history"] == []


def test_no_history_scores_must_cover_every_candidate_or_none() -> None:
    with pytest.raises(RequestLogError, match="p_ctr_no_history has 3 values for 4 candidates"):
        make_record("r", p_ctr_no_history=[0.1, 0.2, 0.3]).check()


def test_a_file_of_the_first_layout_reads_with_empty_no_history_scores(tmp_path: Path) -> None:
    from models.data.requestlog import NO_HISTORY_COLUMNS, SHADOW_COLUMNS, V1_SCHEMA

    v3 = records_to_table([make_record("a"), make_record("b", n=2)])
    v1 = v3.drop_columns([*NO_HISTORY_COLUMNS, *SHADOW_COLUMNS]).replace_schema_metadata(V1_SCHEMA.metadata)
    pq.write_table(v1, tmp_path / "old.parquet")
    table = read_request_log(tmp_path)
    assert table.schema.equals(REQUEST_LOG_SCHEMA, check_metadata=False)
    assert table.column("p_ctr_no_history").to_pylist() == [[], []]
    assert table.column("shadow_model_version").to_pylist() == [0, 0]
    assert table.drop_columns([*NO_HISTORY_COLUMNS, *SHADOW_COLUMNS]).equals(v1, check_metadata=False)
    assert read_request_log(tmp_path, columns=["request_id", "p_cvr_no_history"]).column_names == [
        "request_id", "p_cvr_no_history"]


def test_shadow_scores_round_trip_and_a_second_layout_file_reads_without_them(tmp_path: Path) -> None:
    from models.data.requestlog import SHADOW_COLUMNS, V2_SCHEMA

    shadow = np.array([0.3, 0.1, 0.2, 0.4], np.float32)
    records = [make_record("a", shadow_model_version=3, p_ctr_shadow=shadow, p_cvr_shadow=shadow / 2),
               make_record("b", n=2)]
    for r in records:
        r.check()
    v3 = records_to_table(records)
    pq.write_table(v3, tmp_path / "new.parquet")
    a, b = read_request_log(tmp_path).to_pylist()
    assert a["shadow_model_version"] == 3 and a["p_ctr_shadow"] == shadow.tolist()
    assert a["p_cvr_shadow"] == (shadow / 2).tolist()
    assert b["shadow_model_version"] == 0 and b["p_ctr_shadow"] == [] and b["p_cvr_shadow"] == []
    old = tmp_path / "old"
    old.mkdir()
    v2 = v3.drop_columns(list(SHADOW_COLUMNS)).replace_schema_metadata(V2_SCHEMA.metadata)
    pq.write_table(v2, old / "requests-1.parquet")
    table = read_request_log(old)
    assert table.schema.equals(REQUEST_LOG_SCHEMA, check_metadata=False)
    assert table.column("shadow_model_version").to_pylist() == [0, 0]
    assert table.column("p_ctr_shadow").to_pylist() == [[], []]
    assert table.drop_columns(list(SHADOW_COLUMNS)).equals(v2, check_metadata=False)


@pytest.mark.parametrize("override,field", [
    ({"shadow_model_version": 2, "p_ctr_shadow": [0.1] * 3, "p_cvr_shadow": [0.1] * 3}, "p_ctr_shadow"),
    ({"shadow_model_version": 2}, "shadow_model_version"),
    ({"p_ctr_shadow": [0.1] * 4, "p_cvr_shadow": [0.1] * 4}, "shadow_model_version"),
])
def test_shadow_scores_come_with_their_version_and_cover_every_candidate(override: dict, field: str) -> None:
    with pytest.raises(RequestLogError, match=field):
        make_record("r", **override).check()


def test_the_shadow_snapshot_round_trips_and_a_third_layout_file_reads_without_it(tmp_path: Path) -> None:
    from models.data.requestlog import SCHEMA_TAG, V3_SCHEMA, check_schema

    shadow = np.array([0.3, 0.1, 0.2, 0.4], np.float32)
    records = [make_record("a", shadow_model_version=3, p_ctr_shadow=shadow, p_cvr_shadow=shadow,
                           shadow_snapshot_id="s000007"), make_record("b", n=2)]
    v4 = records_to_table(records)
    pq.write_table(v4, tmp_path / "new.parquet")
    assert check_schema(pq.read_schema(tmp_path / "new.parquet"), "new.parquet") == SCHEMA_TAG == b"requestlog/4"
    assert read_request_log(tmp_path).column("shadow_snapshot_id").to_pylist() == ["s000007", ""]
    old = tmp_path / "old"
    old.mkdir()
    v3 = v4.drop_columns(["shadow_snapshot_id"]).replace_schema_metadata(V3_SCHEMA.metadata)
    pq.write_table(v3, old / "requests-1.parquet")
    table = read_request_log(old)
    assert table.schema.equals(REQUEST_LOG_SCHEMA, check_metadata=False)
    assert table.column("shadow_snapshot_id").to_pylist() == ["", ""]
    assert table.column("shadow_model_version").to_pylist() == [3, 0]
    assert table.drop_columns(["shadow_snapshot_id"]).equals(v3, check_metadata=False)
