"""Metrics: hit rate, staleness and snapshot age, exported to a caller-provided Prometheus registry."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest

from embedding_cache import InMemoryStore, RetentionConfig

T0 = 1_700_000_000_000


def test_metrics_exported_to_registry() -> None:
    store = InMemoryStore()
    w = store.writer("fm-v1", dim=4, codec="float32", retention=RetentionConfig.loopfm())
    w.append_user_codes(np.array([1]), np.array([T0]), np.ones((1, 4), np.float32))
    w.append_ad_codes(np.array([1]), np.ones((1, 4), np.float32))
    w.publish(now_ms=T0 + 10)
    registry = CollectorRegistry()
    r = store.reader("fm-v1", registry=registry)
    r.lookup(1, T0 + 5_000, 8, np.array([1, 2]))
    r.user_history(np.array([2]), T0 + 5_000, 8)
    m = r.metrics
    assert m.hit_rate == 0.5 and m.fallbacks == 1 and m.ad_hit_rate == 0.5 and m.mean_staleness_ms == 5_000
    assert m.snapshot_age_ms > 0
    text = generate_latest(registry).decode()
    assert 'adrank_cache_user_lookups_total{backend="memory",fm_version="fm-v1"} 2.0' in text
    assert 'adrank_cache_staleness_ms_bucket{backend="memory",fm_version="fm-v1",le="10000.0"} 1.0' in text
    assert "adrank_cache_snapshot_age_ms" in text and "adrank_cache_hit_rate" in text


def test_batch_path_matches_single_user_path() -> None:
    rng = np.random.default_rng(0)
    store = InMemoryStore()
    w = store.writer("fm-v1", dim=4, codec="float32")
    n = 5000
    w.append_user_codes(rng.integers(0, 300, n), T0 + rng.integers(0, 1000, n), rng.standard_normal((n, 4)))
    w.publish()
    r = store.reader("fm-v1")
    users, ts = np.arange(310), T0 + rng.integers(0, 1100, 310)
    batch = r.user_history(users, ts, 16)
    for i in range(0, 310, 7):
        one = r.user_history(users[i:i + 1], ts[i:i + 1], 16)
        np.testing.assert_array_equal(one.codes[0], batch.codes[i])
        np.testing.assert_array_equal(one.timestamps[0], batch.timestamps[i])
