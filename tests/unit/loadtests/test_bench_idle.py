"""The idle-gap bench's timing helper: the wait runs before every call (warm-up included) only when a gap
is asked, a call's own duration is used when it reports one, and spinning really waits."""

from __future__ import annotations

import time

from loadtests.bench_idle import WARMUP, spin_gap, timed_p50


def test_wait_runs_before_every_call_only_with_a_gap():
    waits: list[float] = []
    timed_p50(lambda: 5.0, 10, 0.001, waits.append)
    assert waits == [0.001] * (10 + WARMUP)
    waits.clear()
    timed_p50(lambda: 5.0, 10, 0.0, waits.append)
    assert waits == []


def test_the_calls_own_duration_wins_and_the_median_is_over_the_measured_calls():
    values = iter([1e6] * WARMUP + [1.0, 2.0, 3.0, 100.0, 4.0])
    assert timed_p50(lambda: next(values), 5, 0.0, lambda s: None) == 3.0


def test_spin_gap_waits_at_least_its_time():
    t = time.perf_counter()
    spin_gap(0.002)
    assert time.perf_counter() - t >= 0.002
