"""The label join on hand-made logs and labels: exact counts, windows, late labels apart, ESMM rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from models.data.labels import labels_table
from models.data.requestlog import records_to_table
from models.data.schema import EventLog
from models.features import FeatureSpec, features_from_events
from models.logjoin import join, join_logs, main
from tests.requestlog_fixtures import make_record

S = 1_000  # ms
T1, T2, T3 = 1_000_000, 2_000_000, 3_000_000
CLICK_W, CONV_W = 60.0, 86_400.0


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    """r1: ads 10..13 (user 7); r2: ads 20..22 (user 8, placement 3); r3 logged twice (a retry)."""
    folder = tmp_path / "log"
    folder.mkdir()
    first = [make_record("r1", request_time_ms=T1), make_record("r3", request_time_ms=T3, ad_ids=[30])]
    second = [make_record("r2", request_time_ms=T2, user_id=8, placement=3, ad_ids=[20, 21, 22]),
              make_record("r3", request_time_ms=T3, ad_ids=[30])]
    pq.write_table(records_to_table(first), folder / "requests-a.parquet")
    pq.write_table(records_to_table(second), folder / "requests-b.parquet")
    return folder


def _labels(rows: list[tuple[str, int, int, str, int]]):
    return labels_table(*(list(col) for col in zip(*rows, strict=True)))


LABELS = [
    # r1 ad 13: shown, clicked after 5 s, converted after 1 h: a full positive
    ("r1", 13, T1, "impression", T1), ("r1", 13, T1, "click", T1 + 5 * S), ("r1", 13, T1, "conversion", T1 + 3_600 * S),
    # r1 ad 12: click after 120 s (late for a 60 s window); its conversion is then without a joined click
    ("r1", 12, T1, "impression", T1), ("r1", 12, T1, "click", T1 + 120 * S),
    ("r1", 12, T1, "conversion", T1 + 7_200 * S),
    # r2 ad 22: impression twice, a click timed before the impression, two clicks inside, a conversion 2 days on
    ("r2", 22, T2, "impression", T2), ("r2", 22, T2, "impression", T2), ("r2", 22, T2, "click", T2 - 1 * S),
    ("r2", 22, T2, "click", T2 + 10 * S), ("r2", 22, T2, "click", T2 + 20 * S),
    ("r2", 22, T2, "conversion", T2 + 2 * 86_400 * S),
    # r2 ad 99: not one of r2's candidates; r9: a request the log lacks (sampled out)
    ("r2", 99, T2, "impression", T2), ("r2", 99, T2, "click", T2 + 1 * S),
    ("r9", 5, T2, "impression", T2), ("r9", 5, T2, "click", T2 + 2 * S),
    # a click on r1 ad 11, which was never shown
    ("r1", 11, T1, "click", T1 + 3 * S),
    # r3 ad 30: shown, no label
    ("r3", 30, T3, "impression", T3),
]


def test_exact_counts_windows_and_late_labels(log_dir: Path) -> None:
    events, report, request_ids = join_logs(log_dir, _labels(LABELS), click_window_s=CLICK_W,
                                            conversion_window_s=CONV_W)
    assert report.to_dict() == {
        "requests": 3, "duplicate_requests": 1, "impressions": 6, "duplicate_impressions": 1, "rows": 4,
        "unlogged_impressions": 1, "unknown_candidates": 1,
        "clicks": 2, "late_clicks": 1, "early_clicks": 1, "repeat_clicks": 1,
        "conversions": 1, "late_conversions": 1, "early_conversions": 0, "conversions_without_click": 1,
        "repeat_conversions": 0, "orphan_labels": 1, "labels_of_unjoined": 2,
    }
    outcomes = sum(v for k, v in report.to_dict().items() if k not in (
        "requests", "duplicate_requests", "impressions", "duplicate_impressions", "rows", "unlogged_impressions",
        "unknown_candidates"))
    assert outcomes == sum(1 for row in LABELS if row[3] != "impression")  # each label counted exactly once
    assert request_ids.tolist() == ["r1", "r1", "r2", "r3"]
    assert events["ad_id"].tolist() == [12, 13, 22, 30]  # time order, then request slot
    assert events["click"].tolist() == [0, 1, 1, 0] and events["conversion"].tolist() == [0, 1, 0, 0]
    assert events["event_id"].tolist() == [0, 1, 2, 3] and events["ts_ms"].tolist() == [T1, T1, T2, T3]


def test_rows_carry_the_logged_features(log_dir: Path) -> None:
    events = join(log_dir, _labels(LABELS), CLICK_W, CONV_W)
    r2 = events.take(np.flatnonzero(events["ad_id"] == 22))
    context = (r2["user_id"][0], r2["placement"][0], r2["device"][0], r2["hour"][0], r2["user_segment"][0])
    assert context == (8, 3, 2, 5, 3)
    # ad 22 is r2's third candidate (slot 2): advertiser 102, campaign 202, category 2, bid 3.0
    assert (r2["advertiser_id"][0], r2["campaign_id"][0], r2["category"][0], r2["bid"][0]) == (102, 202, 2, 3.0)
    assert np.isnan(events["p_click"]).all() and np.isnan(events["p_conversion"]).all()
    assert events.source == "requestlog" and events.meta["join"]["rows"] == 4


def test_wider_windows_join_what_was_late(log_dir: Path) -> None:
    _, report, _ = join_logs(log_dir, _labels(LABELS), click_window_s=600, conversion_window_s=3 * 86_400)
    assert (report.clicks, report.late_clicks, report.conversions, report.late_conversions) == (3, 0, 3, 0)
    assert report.conversions_without_click == 0


def test_the_result_is_an_event_log_the_trainer_reads(log_dir: Path, tmp_path: Path) -> None:
    events = join(log_dir, _labels(LABELS), CLICK_W, CONV_W)
    events.save(tmp_path / "events.npz")
    loaded = EventLog.load(tmp_path / "events.npz")  # the schema's checks run again on load
    assert np.all(loaded["conversion"] <= loaded["click"])
    for name in ("ad_id", "click", "conversion", "bid", "ts_ms"):
        np.testing.assert_array_equal(loaded[name], events[name])
    assert loaded.meta["join"] == events.meta["join"]
    spec = FeatureSpec.from_cardinality(loaded.cardinality)
    feats = features_from_events(spec, loaded)
    assert feats["sparse"].shape == (4, spec.n_fields)


def test_empty_inputs_and_bad_windows(log_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    events, report, _ = join_logs(empty, _labels(LABELS), click_window_s=CLICK_W, conversion_window_s=CONV_W)
    assert len(events) == 0 and report.unlogged_impressions == 6 and report.rows == 0
    events, report, _ = join_logs(log_dir, _labels([("r1", 13, T1, "click", T1)]), click_window_s=1,
                                  conversion_window_s=1)
    assert len(events) == 0 and report.orphan_labels == 1
    with pytest.raises(ValueError, match="windows"):
        join(log_dir, _labels(LABELS), 0, CONV_W)


def test_main_writes_the_event_log(log_dir: Path, tmp_path: Path) -> None:
    from models.data.labels import write_labels

    labels = write_labels(tmp_path / "labels.parquet", _labels(LABELS))
    out = tmp_path / "joined" / "events.npz"
    assert main(["--request-log", str(log_dir), "--labels", str(labels), "--click-window", "60",
                 "--out", str(out)]) == 0
    assert len(EventLog.load(out)) == 4
    assert main(["--request-log", str(tmp_path / "missing"), "--labels", str(labels), "--out", str(out)]) == 2
