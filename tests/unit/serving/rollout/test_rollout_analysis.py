"""Canary analysis: PSI and ratio checks from per-arm samples, and the advance() state machine — a good
canary steps 10 → 50 → promote, a biased one is rolled back after `threshold` windows with the reason."""

from __future__ import annotations

import numpy as np
import pytest
from rollout_fixtures import arm, window

from serving.rollout.analysis import (
    AnalysisState,
    ArmWindow,
    HookOutcome,
    WindowMetrics,
    advance,
    evaluate,
    psi,
    score_psi,
    veto_promotion,
)
from serving.rollout.errors import RolloutError
from serving.rollout.spec import Checks, RolloutSpec

SPEC = RolloutSpec(model="vm", version=2, steps=(10.0, 50.0), interval_s=60, threshold=3)
def run(spec: RolloutSpec, windows) -> list:
    state, decisions = AnalysisState(spec), []
    for w in windows:
        d = advance(state, w)
        decisions.append(d)
        state = d.state
        if state.phase != "progressing":
            break
    return decisions


def test_psi_is_zero_for_equal_histograms_and_grows_with_shift():
    assert psi([10, 20, 30], [10, 20, 30]) == pytest.approx(0.0)
    assert psi([50, 50], [90, 10]) > 0.5
    rng = np.random.default_rng(0)
    live = rng.normal(0, 1, 20_000)
    assert score_psi(live, rng.normal(0, 1, 20_000)) < 0.01
    assert 0.05 < score_psi(live, rng.normal(0.3, 1, 20_000)) < score_psi(live, rng.normal(0.6, 1, 20_000))
    with pytest.raises(ValueError):
        psi([1], [1])


def test_a_good_canary_steps_up_then_promotes():
    decisions = run(SPEC, (window(i) for i in range(10)))
    assert [(d.action, d.weight) for d in decisions] == [("step_up", 50.0), ("promote", 100.0)]
    first = decisions[0]
    assert first.reason == "4 checks passed (calibration skipped): weight 10 → 50"
    statuses = {c.name: c.status for c in first.checks}
    assert statuses == {"error_rate": "passed", "p99_latency_ratio": "passed", "psi": "passed",
                        "p_ctr_ratio": "passed", "calibration": "skipped"}
    assert "waiting for delayed labels" in next(c.message for c in first.checks if c.name == "calibration")


def test_a_biased_canary_fails_psi_and_is_rolled_back_within_threshold_windows():
    decisions = run(SPEC, (window(i, logit_shift=0.6) for i in range(10)))
    assert [d.action for d in decisions] == ["hold", "hold", "rollback"]  # threshold = 3 windows
    last = decisions[-1]
    assert last.weight == 0 and last.state.phase == "rolled_back" and last.state.failed_windows == 3
    assert last.reason.startswith("3 of 3 failed windows at weight 10: ")
    assert "PSI of p_ctr" in last.reason and "canary/live mean p_ctr" in last.reason
    metrics = last.audit_metrics()
    assert metrics["psi"]["status"] == "failed" and metrics["psi"]["value"] > 0.2
    assert metrics["failed_windows"] == 3
    with pytest.raises(RolloutError, match="already rolled_back"):
        advance(last.state, window(0))


def test_a_spread_canary_with_the_same_mean_is_caught_by_psi_alone():
    # same mean p_ctr (within the ratio bounds) but a wider score distribution: only the PSI sees it
    w = WindowMetrics(live=arm(1), canary=arm(2, logit_scale=2.0, logit_shift=2.3))
    results = {c.name: c for c in evaluate(SPEC.checks, w)}
    assert results["p_ctr_ratio"].status == "passed", results["p_ctr_ratio"].message
    assert results["psi"].status == "failed", results["psi"].message


def test_errors_and_latency_fail_their_checks():
    errs = {c.name: c.status for c in evaluate(SPEC.checks, window(0, errors=60))}
    assert errs["error_rate"] == "failed"
    slow = {c.name: c for c in evaluate(SPEC.checks, window(0, latency_ms=6.0))}
    assert slow["p99_latency_ratio"].status == "failed" and slow["p99_latency_ratio"].value > 1.2


def test_a_thin_window_holds_without_counting():
    thin = WindowMetrics(live=arm(1), canary=arm(2, n=50))
    d = advance(AnalysisState(SPEC), thin)
    assert d.action == "hold" and d.state.failed_windows == 0 and d.state.windows == 1
    assert d.reason.startswith("insufficient traffic: live 2000, canary 50 calls (need 200 each)")


def test_failed_windows_accumulate_over_the_rollout():
    # fail, pass (step up), fail, fail → rollback at 50%: failures are not forgiven by a good window
    seq = [window(0, logit_shift=0.6), window(1), window(2, logit_shift=0.6), window(3, logit_shift=0.6)]
    assert [(d.action, d.weight) for d in run(SPEC, seq)] == [("hold", 10), ("step_up", 50), ("hold", 50),
                                                                ("rollback", 0)]


def test_calibration_is_checked_once_labels_exist():
    labeled = WindowMetrics(live=arm(1, labels=True), canary=arm(2, labels=True))
    cal = next(c for c in evaluate(SPEC.checks, labeled) if c.name == "calibration")
    assert cal.status == "passed" and 0.8 <= cal.value <= 1.25
    over = arm(2, labels=True)
    over = ArmWindow(requests=over.requests, p99_ms=over.p99_ms, scores=over.scores, mean_p_ctr=over.mean_p_ctr,
                     labeled=over.labeled, clicks=over.clicks, predicted_clicks=over.predicted_clicks * 2)
    cal = next(c for c in evaluate(SPEC.checks, WindowMetrics(arm(1, labels=True), over)) if c.name == "calibration")
    assert cal.status == "failed" and cal.value == pytest.approx(2.0, rel=0.2)  # canary/live, not canary alone
    assert "calibration canary/live" in cal.message


def test_calibration_waits_for_min_labelled_per_arm_and_holds_promotion():
    from dataclasses import replace

    from serving.rollout.spec import Labels

    few = WindowMetrics(live=arm(1, labels=True), canary=arm(2, labels=True, n=150))
    cal = next(c for c in evaluate(SPEC.checks, few) if c.name == "calibration")
    assert cal.status == "skipped" and "canary 150, live 2000 labelled" in cal.message and "need 200" in cal.message
    last = replace(SPEC, steps=(50.0,), labels=Labels(monitor_url="http://127.0.0.1:1/metrics"))
    waiting = WindowMetrics(live=arm(1), canary=arm(2))  # no labels yet: every other check passes
    d = advance(AnalysisState(last), waiting)
    assert d.action == "hold" and d.state.failed_windows == 0 and "promotion waits for calibration" in d.reason
    no_source = replace(waiting, labels_note="no label source in the spec")
    assert advance(AnalysisState(replace(last, labels=None)), no_source).action == "promote"
    d = advance(AnalysisState(last), WindowMetrics(live=arm(1, labels=True), canary=arm(2, labels=True)))
    assert d.action == "promote"


def test_histograms_work_where_samples_are_not_kept():
    live = ArmWindow(requests=500, p99_ms=4.0, score_counts=np.array([100, 300, 100]), mean_p_ctr=0.05)
    same = ArmWindow(requests=500, p99_ms=4.0, score_counts=np.array([100, 300, 100]), mean_p_ctr=0.05)
    moved = ArmWindow(requests=500, p99_ms=4.0, score_counts=np.array([20, 200, 280]), mean_p_ctr=0.05)
    assert {c.name: c.status for c in evaluate(Checks(), WindowMetrics(live, same))}["psi"] == "passed"
    assert {c.name: c.status for c in evaluate(Checks(), WindowMetrics(live, moved))}["psi"] == "failed"


def test_step_webhook_vetoes_count_and_promotion_vetoes_hold():
    veto = HookOutcome("load-test", "step", False, "HTTP 500: p99 too high")
    d = advance(AnalysisState(SPEC), WindowMetrics(arm(1), arm(2), hooks=(veto,)))
    assert d.action == "hold" and d.state.failed_windows == 1 and "HTTP 500: p99 too high" in d.reason
    last = AnalysisState(SPEC, step=1)
    promote = advance(last, window(0))
    assert promote.action == "promote"
    held = veto_promotion(last, promote, [HookOutcome("approval", "promotion", False, "HTTP 403")])
    assert held.action == "hold" and held.state.phase == "progressing" and held.state.failed_windows == 0
    assert held.weight == 50 and held.reason == "promotion vetoed by approval: HTTP 403"
    assert veto_promotion(last, promote, [HookOutcome("approval", "promotion", True, "HTTP 200")]) is promote
