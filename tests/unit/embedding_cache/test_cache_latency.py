"""embedding_cache.latency: the one percentile helper of the benchmarks and the load-test report."""

from __future__ import annotations

import math

import numpy as np

from embedding_cache.latency import latency_stats, percentiles


def test_percentiles_match_numpy_and_keep_the_order_asked() -> None:
    x = np.random.default_rng(0).lognormal(0.0, 1.0, 5000)
    got = percentiles(x, (99, 50, 99.9))
    assert list(got) == ["p99", "p50", "p99.9"]
    assert got == {"p99": np.percentile(x, 99), "p50": np.percentile(x, 50), "p99.9": np.percentile(x, 99.9)}
    assert percentiles(list(x), key="client_p{q}_ms") == {"client_p50_ms": got["p50"], "client_p99_ms": got["p99"]}


def test_no_samples_give_nan_rather_than_an_error() -> None:
    # a load test where every call failed still writes its summary
    assert all(math.isnan(v) for v in percentiles([], (50, 95, 99)).values())
    assert all(math.isnan(v) for v in latency_stats(np.zeros(0)).values())


def test_latency_stats_carry_their_unit() -> None:
    stats = latency_stats([1.0, 2.0, 3.0, 10.0], unit="ms")
    assert stats == {"p50_ms": 2.5, "p99_ms": np.percentile([1, 2, 3, 10], 99), "mean_ms": 4.0}
