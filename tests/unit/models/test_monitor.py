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
