"""One conformance suite for every embedding-cache backend (memory, embedded, real redis-server, real Redis Cluster)."""

from __future__ import annotations

import threading
import time

import cache_fixtures
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedding_cache import FmVersionMismatchError, InvalidLookupError, RetentionConfig, SnapshotNotFoundError

StoreFactory = cache_fixtures.StoreFactory
redis_server, redis_url, store = cache_fixtures.redis_server, cache_fixtures.redis_url, cache_fixtures.store
redis_cluster, redis_cluster_url = cache_fixtures.redis_cluster, cache_fixtures.redis_cluster_url

T0 = 1_700_000_000_000


def _codes(values: np.ndarray, dim: int) -> np.ndarray:
    """Codes whose every dim equals `values` (exact in float32, recognisable after a lookup)."""
    return np.repeat(np.asarray(values, np.float32)[:, None], dim, axis=1)


def test_point_in_time_most_recent_first(store: StoreFactory) -> None:
    fm = store.fresh_version()
    w = store.writer(fm, dim=4)
    ts = T0 + np.array([30, 10, 20, 40, 5])
    w.append_user_codes(np.array([1, 1, 1, 1, 2]), ts, _codes(np.array([3, 1, 2, 4, 9]), 4))
    w.publish()
    r = store.reader(fm)
    hb = r.user_history(np.array([1, 2, 3]), T0 + 35, 2)
    assert hb.codes.shape == (3, 2, 4) and hb.codes.dtype == np.float32
    assert hb.lengths.tolist() == [2, 1, 1]
    assert hb.timestamps[0].tolist() == [T0 + 30, T0 + 20]  # strictly before t, newest first
    assert hb.codes[0, :, 0].tolist() == [3, 2]
    assert hb.codes[1, 0, 0] == 9 and hb.codes[1, 1].tolist() == [0] * 4 and hb.timestamps[1, 1] == 0
    assert hb.fallback.tolist() == [False, False, True]
    exact = r.user_history(np.array([1]), T0 + 30, 10)  # ts == t is excluded
    assert exact.timestamps[0, : exact.lengths[0]].tolist() == [T0 + 20, T0 + 10]
    per_user_t = r.user_history(np.array([1, 1]), np.array([T0 + 11, T0 + 100]), 8)
    assert per_user_t.lengths.tolist() == [1, 4]


def test_ad_codes_hits_and_misses(store: StoreFactory) -> None:
    fm = store.fresh_version()
    w = store.writer(fm, dim=4)
    w.append_ad_codes(np.array([5, 7]), _codes(np.array([0.5, 0.7]), 4))
    w.append_ad_codes(np.array([7]), _codes(np.array([0.75]), 4))  # re-embedded ad: last append wins
    w.publish()
    codes, hit = store.reader(fm).ad_codes(np.array([7, 6, 5]))
    assert hit.tolist() == [True, False, True]
    assert codes[:, 0].tolist() == [0.75, 0.0, 0.5]


def test_lookup_is_one_call_for_a_request(store: StoreFactory) -> None:
    fm = store.fresh_version()
    w = store.writer(fm, dim=4)
    w.append_user_codes(np.array([1, 1]), np.array([T0, T0 + 1]), _codes(np.array([1, 2]), 4))
    w.append_ad_codes(np.arange(200), _codes(np.arange(200) / 200, 4))
    sid = w.publish()
    r = store.reader(fm)
    hb, codes, hit = r.lookup(1, T0 + 5, 64, np.arange(150, 250))
    assert hb.lengths.tolist() == [2] and hb.codes[0, :2, 0].tolist() == [2, 1]
    assert hit.sum() == 50 and codes.shape == (100, 4) and hb.snapshot_id == sid == r.snapshot_id
    assert r.metrics.hit_rate == 1.0 and r.metrics.ad_hit_rate == 0.5
    assert r.metrics.mean_staleness_ms == 4.0


def test_cold_start_gets_flagged_population_prior(store: StoreFactory) -> None:
    fm = store.fresh_version()
    w = store.writer(fm, dim=4)
    w.append_user_codes(np.array([1, 2, 2]), np.array([T0, T0, T0 + 1]), _codes(np.array([1.0, 9.0, 3.0]), 4))
    w.publish()
    hb = store.reader(fm).user_history(np.array([99, 1]), T0 + 10, 4)
    assert hb.fallback.tolist() == [True, False] and hb.degraded
    assert hb.lengths[0] == 1 and hb.timestamps[0].tolist() == [0, 0, 0, 0]
    np.testing.assert_allclose(hb.codes[0, 0], [2.0] * 4)  # mean of users' latest codes (1 and 3)
    early = store.reader(fm).user_history(np.array([1]), T0, 4)  # known user, nothing before t
    assert early.fallback.tolist() == [True]


def test_fm_version_isolation(store: StoreFactory) -> None:
    v1, v2 = store.fresh_version(), store.fresh_version()
    for fm, value in ((v1, 1.0), (v2, 2.0)):
        w = store.writer(fm, dim=4)
        w.append_user_codes(np.array([1, 1]), np.array([T0, T0 + 1]), _codes(np.array([value, value]), 4))
        w.append_ad_codes(np.array([3]), _codes(np.array([value]), 4))
        w.publish()
    r1 = store.reader(v1)
    hb, ads, _ = r1.lookup(1, T0 + 5, 8, np.array([3]))
    assert set(hb.codes[0, :2].ravel().tolist()) == {1.0} and set(ads.ravel().tolist()) == {1.0}
    assert hb.fm_version == v1 == r1.fm_version
    with pytest.raises(FmVersionMismatchError, match="fm-missing"):
        store.reader("fm-missing")


def test_unpublished_version_is_snapshot_not_found(store: StoreFactory) -> None:
    fm = store.fresh_version()
    store.writer(fm, dim=4)  # a writer alone publishes nothing
    if store.backend == "embedded":
        with pytest.raises(SnapshotNotFoundError):
            store.reader(fm)
    else:
        with pytest.raises((SnapshotNotFoundError, FmVersionMismatchError)):
            store.reader(fm)


@pytest.mark.parametrize("codec,tol", [("float16", 1e-3), ("int8", 1e-2), ("int4", 0.07), ("pq", 0.5)])
def test_codecs_round_trip(store: StoreFactory, codec: str, tol: float) -> None:
    fm = store.fresh_version()
    rng = np.random.default_rng(0)
    codes = np.tanh(rng.standard_normal((300, 8))).astype(np.float32)
    w = store.writer(fm, dim=8, codec=codec)
    w.append_user_codes(np.arange(300) % 30, T0 + np.arange(300), codes)
    w.append_ad_codes(np.arange(50), codes[:50])
    w.publish()
    r = store.reader(fm)
    hb = r.user_history(np.arange(30), T0 + 1000, 10)
    assert hb.lengths.tolist() == [10] * 30
    expected = codes[(np.arange(30)[:, None] + 30 * np.arange(9, -1, -1)[None, :])]
    assert np.sqrt(np.mean((hb.codes - expected) ** 2)) < tol
    ads, hit = r.ad_codes(np.arange(50))
    assert hit.all() and np.sqrt(np.mean((ads - codes[:50]) ** 2)) < tol


def test_publish_carries_rows_applies_retention_and_refresh_swaps(store: StoreFactory) -> None:
    fm = store.fresh_version()
    w = store.writer(fm, dim=4, retention=RetentionConfig(max_per_user=3, max_age_ms=1000, keep_snapshots=2))
    w.append_user_codes(np.array([1, 1, 2]), np.array([T0, T0 + 500, T0]), _codes(np.array([1, 2, 7]), 4))
    first = w.publish(now_ms=T0 + 600)
    r = store.reader(fm)
    w.append_user_codes(np.array([1, 1]), np.array([T0 + 900, T0 + 1400]), _codes(np.array([3, 4]), 4))
    second = w.publish(now_ms=T0 + 1600)  # age limit drops ts < T0 + 600: user 2 and user 1's first code
    assert r.snapshot_id == first and r.user_history(np.array([1]), T0 + 2000, 8).lengths[0] == 2
    assert r.refresh() and r.snapshot_id == second and not r.refresh()
    hb = r.user_history(np.array([1, 2]), T0 + 2000, 8)
    assert hb.codes[0, :, 0].tolist()[:3] == [4, 3, 0] and hb.lengths.tolist() == [2, 1]
    assert hb.fallback.tolist() == [False, True]
    w.append_user_codes(np.array([1] * 4), T0 + 1500 + np.arange(4), _codes(np.arange(10, 14), 4))
    w.publish(now_ms=T0 + 1600)
    r.refresh()
    assert r.user_history(np.array([1]), T0 + 9999, 8).codes[0, :, 0].tolist()[:4] == [13, 12, 11, 0]


def test_invalid_lookups_are_typed(store: StoreFactory) -> None:
    fm = store.fresh_version()
    w = store.writer(fm, dim=4)
    w.append_user_codes(np.array([1]), np.array([T0]), _codes(np.array([1]), 4))
    w.publish()
    r = store.reader(fm)
    for bad in (lambda: r.user_history(np.array([-1]), T0, 4), lambda: r.user_history(np.array([1]), T0, 0),
                lambda: r.user_history(np.array([1]), T0, 4097), lambda: r.ad_codes(np.arange(4097)),
                lambda: r.lookup(1, 0, 4, np.array([1])), lambda: r.ad_codes(np.array([1.5])),
                lambda: r.user_history(np.array([1, 2]), np.array([T0]), 4)):
        with pytest.raises(InvalidLookupError):
            bad()


def test_publish_while_four_threads_read(store: StoreFactory) -> None:
    """Readers see snapshot k entirely: every user has exactly k codes valued k, k-1, ..., 1."""
    fm = store.fresh_version()
    users = np.arange(20)
    w = store.writer(fm, dim=4)

    def add(k: int) -> None:
        w.append_user_codes(users, np.full(20, T0 + k), _codes(np.full(20, float(k)), 4))
        w.append_ad_codes(np.arange(5), _codes(np.full(5, float(k)), 4))
        w.publish()

    add(1)
    readers = [store.reader(fm) for _ in range(4)]
    stop, failures, seen = threading.Event(), [], set()

    def loop(r) -> None:
        while not stop.is_set():
            try:
                r.refresh()
                hb, ads, _ = r.lookup(int(np.random.randint(20)), T0 + 100, 64, np.arange(5))
                k = int(hb.lengths[0])
                batch = r.user_history(users, T0 + 100, 64)
                kb = int(batch.lengths[0])
                ok = (hb.codes[0, :k, 0].tolist() == list(range(k, 0, -1)) and set(ads.ravel()) == {float(k)}
                      and (batch.lengths == kb).all() and (batch.codes[:, 0, 0] == kb).all())
                seen.add(k)
                if not ok:
                    failures.append((k, kb))
            except Exception as exc:  # noqa: BLE001 - any exception is a failed read
                failures.append(repr(exc))

    threads = [threading.Thread(target=loop, args=(r,)) for r in readers]
    for t in threads:
        t.start()
    for k in range(2, 7):
        time.sleep(0.02)  # let readers run between publishes
        add(k)
    time.sleep(0.02)
    stop.set()
    for t in threads:
        t.join()
    assert failures == []
    assert len(seen) >= 2  # readers really crossed publishes


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 12)), min_size=0, max_size=40),
    t=st.integers(1, 14), max_len=st.integers(1, 6),
)
def test_property_exactly_the_l_most_recent_before_t(store: StoreFactory, rows: list[tuple[int, int]],
                                                     t: int, max_len: int) -> None:
    fm = store.fresh_version()
    w = store.writer(fm, dim=2, retention=RetentionConfig(max_per_user=1000))
    uids = np.array([u for u, _ in rows], np.int64)
    ts = np.array([s for _, s in rows], np.int64)
    tags = np.arange(len(rows), dtype=np.float32)  # each row's code is its append index
    w.append_user_codes(uids, ts, _codes(tags, 2))
    w.append_user_codes(np.array([9]), np.array([1]), _codes(np.array([-1.0]), 2))  # keep the store non-empty
    w.publish(now_ms=100)
    hb = store.reader(fm).user_history(np.arange(4), t, max_len)
    for u in range(4):
        before = sorted((s, i) for i, (uu, s) in enumerate(rows) if uu == u and s < t)  # ties: append order
        expected = before[::-1][:max_len]
        if not expected:
            assert hb.fallback[u] and hb.lengths[u] == 1 and hb.timestamps[u, 0] == 0
            continue
        n = int(hb.lengths[u])
        assert not hb.fallback[u] and n == len(expected)
        assert (hb.timestamps[u, :n] < t).all()
        assert hb.timestamps[u, :n].tolist() == [s for s, _ in expected]
        assert hb.codes[u, :n, 0].tolist() == [float(i) for _, i in expected]
        assert (hb.codes[u, n:] == 0).all() and (hb.timestamps[u, n:] == 0).all()


def test_republishing_the_same_events_stores_each_once_with_its_newest_code(store: StoreFactory) -> None:
    fm = store.fresh_version()
    users, ts, eids = np.array([1, 1, 1, 2]), T0 + np.array([10, 10, 20, 10]), np.array([100, 101, 102, 200])
    w = store.writer(fm, dim=4)
    w.append_user_codes(users, ts, _codes(np.array([1, 2, 3, 4]), 4), event_ids=eids)
    w.publish(coverage={"source": "test"})
    first = store.reader(fm).user_history(np.array([1, 2]), T0 + 100, 8)
    for _ in range(2):  # the same events again, in a fresh writer (a re-run of the embed job)
        again = store.writer(fm, dim=4)
        again.append_user_codes(users, ts, _codes(np.array([1, 2, 3, 4]), 4), event_ids=eids)
        again.publish()
    r = store.reader(fm)
    hb = r.user_history(np.array([1, 2]), T0 + 100, 8)
    assert hb.lengths.tolist() == first.lengths.tolist() == [3, 1]
    assert sorted(hb.codes[0, :3, 0].tolist()) == [1, 2, 3]
    recoded = store.writer(fm, dim=4)  # re-embedded with a new FM pass: the newest code replaces the old one
    recoded.append_user_codes(np.array([1]), T0 + np.array([20]), _codes(np.array([7]), 4), event_ids=np.array([102]))
    recoded.publish()
    hb = store.reader(fm).user_history(np.array([1]), T0 + 100, 8)
    assert hb.lengths.tolist() == [3] and hb.codes[0, 0, 0] == 7
    anonymous = store.writer(fm, dim=4)  # rows without event ids are appended as before, never merged
    anonymous.append_user_codes(np.array([2, 2]), T0 + np.array([10, 10]), _codes(np.array([5, 5]), 4))
    anonymous.publish()
    assert store.reader(fm).user_history(np.array([2]), T0 + 100, 8).lengths.tolist() == [3]


def test_each_snapshot_records_what_it_covers(store: StoreFactory) -> None:
    fm = store.fresh_version()
    w = store.writer(fm, dim=4)
    assert w.current_coverage() == {}
    w.append_user_codes(np.array([1, 2]), T0 + np.array([10, 30]), _codes(np.array([1, 2]), 4),
                        event_ids=np.array([1, 2]))
    w.publish(coverage={"source": "synthetic"})
    cov = store.writer(fm, dim=4).current_coverage()
    assert cov == {"source": "synthetic", "high_water_ms": T0 + 30, "rows": 2}
    w2 = store.writer(fm, dim=4)
    w2.append_user_codes(np.array([1]), T0 + np.array([20]), _codes(np.array([3]), 4), event_ids=np.array([3]))
    w2.publish()  # an older event does not lower the high-water mark; the source is carried over
    assert store.writer(fm, dim=4).current_coverage() == {"source": "synthetic", "high_water_ms": T0 + 30, "rows": 3}
