"""Pooled windows: per-replica cumulative histograms merge by addition, the baseline removes what was
judged, and the pooled figures agree with the same checks on the raw samples."""

from __future__ import annotations

import numpy as np
import pytest

from serving.rollout.analysis import ArmWindow, WindowMetrics, evaluate, score_psi
from serving.rollout.pooled import ArmStats, pooled_window, snapshot_from_dict, snapshot_to_dict
from serving.rollout.shared import RolloutDoc
from serving.rollout.spec import Checks, RolloutSpec, parse_spec


def feed(stats: ArmStats, rng: np.random.Generator, n: int, *, scale: float = 1.0, latency_ms: float = 4.0,
         errors: int = 0) -> tuple[np.ndarray, np.ndarray]:
    lat = rng.lognormal(np.log(latency_ms), 0.3, n)
    scores = np.clip(1 / (1 + np.exp(-rng.normal(-3, 0.8, (n, 10)))) * scale, 0, 1)
    for i in range(n):
        stats.add(lat[i], ok=i >= errors, p_ctr=scores[i])
    return lat, scores.ravel()


def test_pooled_counts_are_the_sum_over_replicas_minus_the_baseline():
    rng = np.random.default_rng(0)
    a = {"live": ArmStats(), "canary": ArmStats()}
    b = {"live": ArmStats(), "canary": ArmStats()}
    feed(a["live"], rng, 300)
    baseline = snapshot_from_dict(snapshot_to_dict({"a": a}))  # a's first 300 live calls were judged already
    feed(a["live"], rng, 200)
    feed(b["live"], rng, 250)
    feed(a["canary"], rng, 120, errors=3)
    feed(b["canary"], rng, 80, errors=1)
    window, per_replica = pooled_window({"a": a, "b": b}, baseline, psi_bins=10)
    assert window.live.requests == 200 + 250 and window.canary.requests == 200
    assert window.canary.errors == 4
    assert per_replica == {"a": {"live": 200, "canary": 120}, "b": {"live": 250, "canary": 80}}


def test_pooled_p99_psi_and_mean_agree_with_the_raw_samples():
    rng = np.random.default_rng(1)
    live, can, shifted = ArmStats(), ArmStats(), ArmStats()
    lat, live_scores = feed(live, rng, 1500)
    _, can_scores = feed(can, rng, 1500)
    _, shifted_scores = feed(shifted, rng, 1500, scale=2.0)
    window, _ = pooled_window({"r": {"live": live, "canary": can}}, {}, psi_bins=10)
    assert window.live.p99_ms == pytest.approx(np.percentile(lat, 99), rel=0.03)
    assert window.live.mean_p_ctr == pytest.approx(live_scores.mean(), rel=1e-9)
    exact = {c.name: c.value for c in evaluate(Checks(), WindowMetrics(
        ArmWindow.from_samples(lat, live_scores), ArmWindow.from_samples(lat, can_scores)))}
    pooled = {c.name: c.value for c in evaluate(Checks(), window)}
    assert pooled["psi"] == pytest.approx(exact["psi"], abs=0.02) and pooled["psi"] < 0.05
    bad, _ = pooled_window({"r": {"live": live, "canary": shifted}}, {}, psi_bins=10)
    checks = {c.name: c for c in evaluate(Checks(), bad)}
    assert checks["psi"].status == "failed"
    assert checks["psi"].value == pytest.approx(score_psi(live_scores, shifted_scores), rel=0.15)
    assert checks["p_ctr_ratio"].value == pytest.approx(shifted_scores.mean() / live_scores.mean(), rel=1e-9)


def test_a_replica_restart_is_not_a_negative_window():
    rng = np.random.default_rng(2)
    old = {"live": ArmStats()}
    feed(old["live"], rng, 400)
    fresh = {"live": ArmStats()}
    feed(fresh["live"], rng, 50)
    window, _ = pooled_window({"a": fresh}, {"a": old}, psi_bins=10)
    assert window.live.requests == 50


def test_the_rollout_doc_round_trips_spec_state_and_baseline():
    from serving.rollout.analysis import AnalysisState

    spec = parse_spec('model = "vm"\nversion = 3\nsteps = [10, 50]\ninterval_s = 5\n[checks]\nmin_labelled = 50\n'
                      'calibration = [0.7, 1.4]\n[labels]\nmonitor_url = "http://127.0.0.1:9101/metrics"\n'
                      '[[webhooks]]\nname = "gate"\nphase = "step"\nurl = "http://127.0.0.1:1/x"\n'
                      'metadata = { owner = "ads" }\n')
    stats = ArmStats()
    stats.add(3.0, True, np.array([0.1, 0.2]))
    doc = RolloutDoc(spec, 123, AnalysisState(spec, step=1, failed_windows=1, windows=4), paused=True,
                     leader="r1", baseline={"r1": {"live": stats}})
    back = RolloutDoc.from_json(doc.to_json())
    assert back.spec == spec and isinstance(back.spec, RolloutSpec)
    assert back.state == doc.state and back.paused and back.leader == "r1"
    assert back.baseline["r1"]["live"] == stats
    assert back.lease == "analysis:vm:123"
