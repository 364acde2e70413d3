"""The fused numba lookup (kernels.py) against the numpy path (csr.py): bit-identical, same errors, same metrics."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedding_cache import InMemoryStore, InvalidLookupError, RetentionConfig, kernels
from embedding_cache.kernels import ENV_SWITCH, IdIndex

pytest.importorskip("numba")

T0 = 1_700_000_000_000
CODECS = ("float32", "float16", "int8", "int4", "pq")


def _store(codec: str, user_ids: np.ndarray, ad_ids: np.ndarray, per_user: int = 40, seed: int = 0,
           dim: int = 8) -> InMemoryStore:
    rng = np.random.default_rng(seed)
    store = InMemoryStore()
    w = store.writer("fm-k", dim=dim, codec=codec, retention=RetentionConfig(max_per_user=per_user))
    uids = np.repeat(user_ids, rng.integers(1, per_user + 1, len(user_ids)))
    ts = T0 + rng.integers(0, 50, len(uids))  # few distinct times: ties and t == ts are common
    w.append_user_codes(uids, ts, np.tanh(rng.standard_normal((len(uids), dim))).astype(np.float32))
    if len(ad_ids):
        w.append_ad_codes(ad_ids, np.tanh(rng.standard_normal((len(ad_ids), dim))).astype(np.float32))
    w.publish(now_ms=T0 + 100)
    return store


def _readers(store: InMemoryStore, monkeypatch: pytest.MonkeyPatch):
    fast = store.reader("fm-k")
    with monkeypatch.context() as m:
        m.setenv(ENV_SWITCH, "numpy")
        slow = store.reader("fm-k")
    assert (fast.lookup_path, slow.lookup_path) == ("numba", "numpy")
    return fast, slow


def _assert_same(fast, slow, user_id: int, t: int, max_len: int, ad_ids) -> None:
    hb_f, ads_f, hit_f = fast.lookup(user_id, t, max_len, ad_ids)
    hb_s, ads_s, hit_s = slow.lookup(user_id, t, max_len, ad_ids)
    for a, b in ((hb_f.codes, hb_s.codes), (hb_f.lengths, hb_s.lengths), (hb_f.timestamps, hb_s.timestamps),
                 (hb_f.fallback, hb_s.fallback), (ads_f, ads_s), (hit_f, hit_s)):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))  # bit for bit, -0.0 included
    assert (hb_f.snapshot_id, hb_f.fm_version) == (hb_s.snapshot_id, hb_s.fm_version)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("ids", ["dense", "sparse", "skewed"])
def test_kernel_matches_numpy_path(codec: str, ids: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    if ids == "dense":
        users, ads = np.arange(5, 65), np.arange(100, 400)
    elif ids == "sparse":
        users = np.unique(rng.integers(0, 2**40, 60))
        ads = np.unique(rng.integers(0, 2**50, 300))
    else:  # a cluster of small ids and a few huge ones: one bucket holds most ids
        users = np.r_[np.arange(50), [2**40, 2**62]]
        ads = np.r_[np.arange(0, 600, 2), [2**45, 2**61 + 3]]
    fast, slow = _readers(_store(codec, users, ads), monkeypatch)
    asked_users = np.r_[users[:20], users[-2:], [int(users.max()) + 1]]
    candidates = np.r_[ads[:50], ads[-3:], ads[:20] + 1, [0, 2**62 + 5]]
    for i, user in enumerate(asked_users):
        for t in (T0 - 1, T0, T0 + 7, T0 + 49, T0 + 10_000):
            _assert_same(fast, slow, int(user), t, 1 + (i % 12), rng.permutation(candidates))
    assert fast.metrics.as_dict() | {"snapshot_age_ms": 0} == slow.metrics.as_dict() | {"snapshot_age_ms": 0}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.integers(0, 6), st.integers(1, 12)), min_size=0, max_size=50),
       ad_ids=st.lists(st.integers(0, 40), max_size=20, unique=True),
       asked=st.lists(st.integers(0, 45), max_size=30),
       user=st.integers(0, 8), t=st.integers(1, 14), max_len=st.integers(1, 8),
       codec=st.sampled_from(["float32", "int8", "int4"]))
def test_property_kernel_equals_numpy(rows, ad_ids, asked, user, t, max_len, codec,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    store = InMemoryStore()
    w = store.writer("fm-k", dim=4, codec=codec, retention=RetentionConfig(max_per_user=1000))
    tags = np.tanh(np.arange(len(rows), dtype=np.float32) / 7)
    w.append_user_codes(np.array([u for u, _ in rows], np.int64), np.array([s for _, s in rows], np.int64),
                        np.repeat(tags[:, None], 4, axis=1))
    if ad_ids:
        w.append_ad_codes(np.array(ad_ids), np.tanh(np.outer(np.array(ad_ids) / 9, np.ones(4))).astype(np.float32))
    w.publish(now_ms=100)
    fast, slow = _readers(store, monkeypatch)
    _assert_same(fast, slow, user, t, max_len, np.array(asked, np.int64))


@pytest.mark.parametrize("make", [
    lambda a: a.astype(np.int32), lambda a: a.astype(np.uint16), lambda a: np.repeat(a, 2)[::2],
    lambda a: a.tolist(), lambda a: np.frombuffer(a.tobytes(), np.int64), lambda a: a[:0],
    lambda a: np.frombuffer(b"\0" + a.tobytes(), np.int64, count=len(a), offset=1),  # misaligned
])
def test_any_integer_ids_are_served_without_compiling(make, monkeypatch: pytest.MonkeyPatch) -> None:
    fast, slow = _readers(_store("int8", np.arange(10), np.arange(50)), monkeypatch)
    dispatcher = kernels.ensure_compiled()
    before = len(dispatcher.overloads)
    _assert_same(fast, slow, 3, T0 + 20, 16, make(np.array([4, 60, 7, 49, 0], np.int64)))
    assert len(dispatcher.overloads) == before == 2  # the two signatures compiled at open, nothing since


def test_negative_ad_ids_raise_the_same_error(monkeypatch: pytest.MonkeyPatch) -> None:
    fast, slow = _readers(_store("int8", np.arange(10), np.arange(50)), monkeypatch)
    for reader in (fast, slow):
        with pytest.raises(InvalidLookupError, match=r"ad_ids must be >= 0, got -7"):
            reader.lookup(1, T0 + 5, 8, np.array([3, -2, 5, -7]))
        with pytest.raises(InvalidLookupError, match="user_id"):
            reader.lookup(-1, T0 + 5, 8, np.array([3]))
        with pytest.raises(InvalidLookupError, match="t_ms"):
            reader.lookup(1, 2**63, 8, np.array([3]))
    assert fast.metrics.user_lookups == slow.metrics.user_lookups == 0  # refused lookups are not counted


def test_refresh_rebuilds_the_kernel_for_the_new_snapshot() -> None:
    store = InMemoryStore()
    w = store.writer("fm-k", dim=4, codec="int8")
    w.append_user_codes(np.array([1]), np.array([T0]), np.full((1, 4), 0.5, np.float32))
    w.publish()
    r = store.reader("fm-k")
    w.append_ad_codes(np.array([7]), np.full((1, 4), 0.25, np.float32))
    w.publish()
    assert r.lookup(1, T0 + 1, 4, np.array([7]))[2].tolist() == [False]
    assert r.refresh()
    hb, ads, hit = r.lookup(1, T0 + 1, 4, np.array([7]))
    assert hit.tolist() == [True] and ads[0, 0] == pytest.approx(0.25, abs=1e-2) and hb.snapshot_id == r.snapshot_id


def test_without_numba_readers_use_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "_compiled", None)
    monkeypatch.setitem(sys.modules, "numba", None)  # `import numba` now raises ImportError
    store = _store("int8", np.arange(10), np.arange(50))
    r = store.reader("fm-k")
    assert r.lookup_path == "numpy"
    hb, ads, hit = r.lookup(3, T0 + 20, 8, np.array([1, 99]))
    assert hit.tolist() == [True, False] and hb.codes.shape == (1, 8, 8)


@pytest.mark.parametrize("keys", [
    np.arange(0), np.arange(1), np.arange(7, 1007), np.array([0, 2**62]), np.r_[np.arange(300), 2**50],
    np.unique(np.random.default_rng(0).integers(0, 2**63 - 1, 5000)),
])
def test_id_index_finds_exactly_the_stored_ids(keys: np.ndarray) -> None:
    keys = keys.astype(np.int64)
    index = IdIndex.build(keys)
    probes = np.unique(np.r_[keys, keys + 1, np.maximum(keys - 1, 0), [0, 5, 2**62, 2**63 - 1]]).astype(np.int64)
    expect = {int(k): i for i, k in enumerate(keys)}
    starts = index.starts
    want = [expect.get(key, -1) for key in probes.tolist()]
    assert [kernels._find(keys, starts, index.low, index.shift, index.dense, key) for key in probes.tolist()] == want
    rows = np.empty(len(probes), np.int64)
    kernels._find_many(keys, starts, index.low, index.shift, index.dense, probes, rows)
    assert rows.tolist() == want
    assert len(starts) <= 4 * len(keys) + 2  # about two buckets per id at most
