"""Calibration per model version and arm from a hand-made log and labels: every figure recomputed by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from models.data.labels import labels_table
from models.data.requestlog import records_to_table
from models.logjoin import join
from models.monitor import calibration, main
from tests.requestlog_fixtures import make_record

T = 1_000_000


@pytest.fixture
def logged(tmp_path: Path) -> tuple[Path, object]:
    """r1 (v2, control) shows ads 10 and 11, ad 10 clicked and converted; r2 (v3, canary) shows ad 20, clicked."""
    folder = tmp_path / "log"
    folder.mkdir()
    records = [make_record("r1", request_time_ms=T, ad_ids=[10, 11, 12]),
               make_record("r2", request_time_ms=T + 5_000, user_id=8, ad_ids=[20, 21], model_version=3,
                           rollout_arm="canary")]
    pq.write_table(records_to_table(records), folder / "requests-a.parquet")
    rows = [("r1", 10, T, "impression", T), ("r1", 11, T, "impression", T), ("r1", 10, T, "click", T + 1_000),
            ("r1", 10, T, "conversion", T + 9_000), ("r2", 20, T + 5_000, "impression", T + 5_000),
            ("r2", 20, T + 5_000, "click", T + 6_000)]
    labels = labels_table(*(list(col) for col in zip(*rows, strict=True)))
    return folder, join(folder, labels, click_window_s=60, conversion_window_s=86_400)


def test_calibration_per_version_and_arm_is_mean_predicted_over_observed(logged) -> None:
    folder, events = logged
    rows, match = calibration(events, folder)
    assert (match.rows, match.matched, match.unmatched, match.ambiguous) == (3, 3, 0, 0)
    by = {(r.model_version, r.rollout_arm): r for r in rows}
    control, canary = by[(2, "control")], by[(3, "canary")]
    p = np.linspace(0.01, 0.05, 3, dtype=np.float32).astype(np.float64)  # make_record's p_ctr for 3 candidates
    assert (control.impressions, control.clicks, control.conversions) == (2, 1, 1)
    assert control.mean_p_ctr == pytest.approx((p[0] + p[1]) / 2) and control.ctr == 0.5
    assert control.ctr_calibration == pytest.approx((p[0] + p[1]) / 2 / 0.5)
    assert control.mean_p_cvr_of_clicks == pytest.approx(0.2) and control.cvr_calibration == pytest.approx(0.2)
    assert (canary.impressions, canary.clicks, canary.conversions, canary.ctr) == (1, 1, 0, 1.0)
    assert np.isnan(canary.cvr_calibration)  # no conversion observed: no ratio


def test_monitor_verb_prints_the_table(logged, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # one line per row, as on a terminal
    folder, events = logged
    events.save(tmp_path / "joined.npz")
    assert main(["--joined", str(tmp_path / "joined.npz"), "--request-log", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "vm/2" in out and "canary" in out and "3 of 3 joined rows matched" in out


@pytest.fixture
def sampled_log(tmp_path: Path):
    """Three requests of vm/2 (live); r1 and r2 in the transfer sample (no-history scores), r3 not.
    Shown: every candidate. Clicked: r1's ad 10, r2's ad 21, r3's ad 30."""
    import json

    folder = tmp_path / "log"
    folder.mkdir()
    served = {"r1": [0.30, 0.10], "r2": [0.05, 0.40], "r3": [0.20, 0.20]}
    masked = {"r1": [0.20, 0.15], "r2": [0.10, 0.20]}
    ads = {"r1": [10, 11], "r2": [20, 21], "r3": [30, 31]}
    records = [make_record(rid, request_time_ms=T + i * 1000, user_id=7 + i, ad_ids=ads[rid],
                           p_ctr=np.array(served[rid], np.float32), rollout_arm="live",
                           p_ctr_no_history=np.array(masked.get(rid, []), np.float32),
                           p_cvr_no_history=np.array(masked.get(rid, []), np.float32))
               for i, rid in enumerate(served)]
    pq.write_table(records_to_table(records), folder / "requests-a.parquet")
    rows = []
    for i, rid in enumerate(served):
        t = T + i * 1000
        rows += [(rid, ad, t, "impression", t) for ad in ads[rid]]
    rows += [("r1", 10, T, "click", T + 10), ("r2", 21, T + 1000, "click", T + 1010), ("r3", 30, T + 2000, "click",
                                                                                         T + 2010)]
    labels = labels_table(*(list(col) for col in zip(*rows, strict=True)))
    repo = tmp_path / "repo"
    (repo / "vm" / "2").mkdir(parents=True)
    (repo / "vm" / "2" / "manifest.json").write_text(json.dumps(
        {"metrics": {"test": {"ctr_ne": 0.8}, "test_no_history": {"ctr_ne": 0.9}}}))
    return folder, join(folder, labels, click_window_s=60, conversion_window_s=86_400), repo, served, masked


def _ne(y: list[float], p: list[float]) -> float:
    y_, p_ = np.array(y), np.array(p, np.float32).astype(np.float64)
    base = y_.mean()
    ll = -np.mean(y_ * np.log(p_) + (1 - y_) * np.log(1 - p_))
    return ll / -(base * np.log(base) + (1 - base) * np.log(1 - base))


def test_live_transfer_ratio_is_online_ne_gain_over_offline_on_sampled_impressions(sampled_log) -> None:
    from models.monitor import transfer

    folder, events, repo, served, masked = sampled_log
    (t,) = transfer(events, folder, repo)
    y = [1, 0, 0, 1]  # r1 and r2's impressions only: r3 was not in the transfer sample
    ne_served, ne_masked = _ne(y, served["r1"] + served["r2"]), _ne(y, masked["r1"] + masked["r2"])
    assert (t.model_name, t.model_version, t.rollout_arm, t.impressions, t.clicks) == ("vm", 2, "live", 4, 2)
    assert t.ne_served == pytest.approx(ne_served) and t.ne_no_history == pytest.approx(ne_masked)
    assert t.online_ne_gain == pytest.approx((ne_masked - ne_served) / ne_masked)
    assert t.offline_ne_gain == pytest.approx((0.9 - 0.8) / 0.9)
    assert t.live_transfer_ratio == pytest.approx(t.online_ne_gain / t.offline_ne_gain)
    (no_repo,) = transfer(events, folder)
    assert np.isnan(no_repo.offline_ne_gain) and np.isnan(no_repo.live_transfer_ratio)


def test_collector_exports_calibration_and_transfer_as_gauges(sampled_log, tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from models.monitor import MonitorCollector, calibration, transfer

    folder, events, repo, _, _ = sampled_log
    events.save(tmp_path / "joined.npz")
    registry = CollectorRegistry()
    registry.register(MonitorCollector(tmp_path / "joined.npz", folder, repo, refresh_s=3600))
    (cal,), _ = calibration(events, folder)
    (t,) = transfer(events, folder, repo)
    key = {"model": "vm", "version": "2", "arm": "live"}

    def value(name: str, **extra: str) -> float | None:
        return registry.get_sample_value(f"adrank_monitor_{name}", {**key, **extra})

    assert value("impressions") == 6 and value("clicks") == 3
    assert value("ctr_calibration") == pytest.approx(cal.ctr_calibration)
    assert value("transfer_impressions") == 4
    assert value("ne", history="served") == pytest.approx(t.ne_served)
    assert value("ne", history="masked") == pytest.approx(t.ne_no_history)
    assert value("live_transfer_ratio") == pytest.approx(t.live_transfer_ratio)
    assert registry.get_sample_value("adrank_monitor_joined_rows", {"match": "matched"}) == 6


def test_offline_gain_refuses_names_that_leave_the_repository(tmp_path: Path) -> None:
    from models.monitor import offline_ne_gain

    assert np.isnan(offline_ne_gain(tmp_path, "../etc", 1)) and np.isnan(offline_ne_gain(tmp_path, "..", 1))
    assert np.isnan(offline_ne_gain(tmp_path, "vm", 1))  # no manifest
