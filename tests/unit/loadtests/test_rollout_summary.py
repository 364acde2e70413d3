"""`adrank bench rollout --summarise`: each switch's ratio over runs, read as a geometric mean with an interval."""

from __future__ import annotations

import math

import pytest

from loadtests.rollout_acceptance import SWITCHES, render_summary, summarise_runs


def _report(ratio_by_switch: dict[str, float], aa: float, failed: int = 0) -> dict:
    return {"calls": 1000, "failed": failed, "aa_baseline": {"p99_ratio": aa, "server_p99_ratio": aa},
            "switches": [{"switch": name, "p99_ratio": r, "server_p99_ratio": r / 2}
                         for name, r in ratio_by_switch.items()]}


def test_the_geometric_mean_and_interval_decide_each_switch_and_one_run_gives_no_verdict() -> None:
    steady = {name: 1.0 for name in SWITCHES}
    runs = [_report({**steady, "shadow": r, "rollback": b}, aa) for r, b, aa in
            ((1.1, 1.5, 0.9), (0.9, 1.7, 1.1), (1.0, 1.6, 1.0))]
    s = summarise_runs(runs, max_ratio=1.2)
    shadow, rollback = s["switches"]["shadow"]["caller"], s["switches"]["rollback"]["caller"]
    assert shadow["per_run"] == [1.1, 0.9, 1.0]
    assert shadow["geometric_mean"] == pytest.approx(math.exp((math.log(1.1) + math.log(0.9)) / 3))
    lo, hi = shadow["interval_95"]
    assert lo < shadow["geometric_mean"] < hi and not shadow["holds"]  # 3 runs this spread: too wide to hold
    assert rollback["interval_95"][0] > 1.2 and not rollback["holds"]
    tight = summarise_runs([_report(steady, 1.0), _report({**steady, "shadow": 1.01}, 1.0),
                            _report({**steady, "shadow": 0.99}, 1.0)])
    assert tight["switches"]["shadow"]["caller"]["holds"]
    assert tight["switches"]["shadow"]["server"]["geometric_mean"] == pytest.approx(0.5, rel=0.01)
    assert "shadow" in render_summary(tight) and "A/A (none)" in render_summary(tight)
    one = summarise_runs([_report(steady, 1.0)])  # one run has no interval: never "holds"
    assert not one["switches"]["shadow"]["caller"]["holds"] and s["failed"] == [0, 0, 0]
