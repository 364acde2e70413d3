"""Per-arm analysis windows: every call counted, scores kept for a bounded uniform sample of calls and
built only for the calls the sample keeps, and a take starts a fresh window."""

from __future__ import annotations

import numpy as np

from serving.rollout.runtime import MAX_SCORE_CALLS, ArmWindows


def test_windows_count_every_call_and_sample_scores_boundedly():
    windows, built = ArmWindows(seed=1), []

    def scores(i: int):
        def make() -> np.ndarray:
            built.append(i)
            return np.full(3, i / 10_000, np.float32)
        return make

    n = 5 * MAX_SCORE_CALLS
    for i in range(n):
        windows.add("vm", "canary", latency_ms=float(i % 100), ok=i % 50 != 0, p_ctr=scores(i))
        windows.add("vm", "live", latency_ms=1.0, ok=True, p_ctr=scores(i))
    w = windows.take("vm")
    assert (w.canary.requests, w.canary.errors, w.live.requests) == (n, n // 50, n)
    assert w.canary.scores.size == 3 * MAX_SCORE_CALLS  # the sample of calls, three scores each
    assert len(built) < 0.6 * (2 * n)  # about 500 (1 + ln 5) per arm: far fewer vectors built than calls seen
    # uniform over the window: the kept calls' mean index is near the middle, not the first calls'
    assert abs(w.canary.mean_p_ctr * 10_000 - n / 2) < n * 0.1
    assert w.canary.p99_ms == np.percentile(np.arange(n) % 100, 99)
    empty = windows.take("vm")
    assert empty.live.requests == 0 and empty.canary.requests == 0
