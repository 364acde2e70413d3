"""The serving path's lookup (served_history.HistoryLookup) against the numpy reference path (csr.py):
bit-identical codes, the strictly-before rule, the same metrics, clear refusals, fresh outputs."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from embedding_cache import FmVersionMismatchError, InMemoryStore, InvalidLookupError, RetentionConfig
from embedding_cache.kernels import ENV_SWITCH

pytest.importorskip("numba")

T0 = 1_700_000_000_000
FM = "fm-s"
NO_ADS = np.zeros(0, np.int64)


def _publish(store: InMemoryStore, codec: str, user_ids: np.ndarray, *, dim: int = 8, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    w = store.writer(FM, dim=dim, codec=codec, retention=RetentionConfig(max_per_user=40, max_age_ms=None))
    uids = np.repeat(user_ids, rng.integers(1, 41, len(user_ids)))
    ts = T0 + rng.integers(0, 50, len(uids))  # few distinct times: ties and t == ts are common
    w.append_user_codes(uids, ts, np.tanh(rng.standard_normal((len(uids), dim))).astype(np.float32))
    w.publish(now_ms=T0 + 100)


def _reference(store: InMemoryStore, monkeypatch: pytest.MonkeyPatch, registry: CollectorRegistry | None = None):
    with monkeypatch.context() as m:
        m.setenv(ENV_SWITCH, "numpy")
        slow = store.reader(FM, registry=registry)
    assert slow.lookup_path == "numpy"
    return slow


@pytest.mark.parametrize("codec", ["float32", "int8", "int4"])
@pytest.mark.parametrize("ids", ["dense", "sparse"])
def test_codes_equal_the_numpy_path_bit_for_bit(codec: str, ids: str, monkeypatch: pytest.MonkeyPatch) -> None:
    users = np.arange(5, 45, dtype=np.int64) if ids == "dense" else \
        np.unique(np.random.default_rng(1).integers(0, 2**40, 40))
    store = InMemoryStore()
    _publish(store, codec, users)
    fast, slow = store.reader(FM), _reference(store, monkeypatch)
    probes = [*users[:12].tolist(), int(users.max()) + 1, 0, 3]  # with users it does not hold
    for length, width in ((6, 8), (40, 8), (5, 5), (3, 1)):  # L above and below the history, d narrower
        lookup = fast.history_lookup(length, width, codec)
        assert lookup is not None
        for user in probes:
            for t in (1, T0, T0 + 1, T0 + 25, T0 + 49, T0 + 50, T0 + 10**6):
                hb, _, _ = slow.lookup(user, t, length, NO_ADS)
                codes, n_found, snapshot_id = lookup.fetch(user, t)
                want = np.ascontiguousarray(hb.codes[:, :length, :width])
                assert codes.dtype == np.float32 and codes.shape == (1, length, width)
                assert codes.tobytes() == want.tobytes(), (user, t, length, width)
                assert (n_found == 0) == bool(hb.fallback[0]) and max(n_found, 1) == hb.lengths[0]
                assert snapshot_id == hb.snapshot_id


def test_only_rows_strictly_before_t_are_returned() -> None:
    store = InMemoryStore()
    w = store.writer(FM, dim=2, codec="float32")
    w.append_user_codes(np.array([1, 1, 1]), np.array([T0 - 2, T0 - 1, T0]),
                        np.array([[1, 1], [2, 2], [3, 3]], np.float32))
    w.publish(now_ms=T0 + 10)
    lookup = store.reader(FM).history_lookup(4, 2)
    codes, n_found, _ = lookup.fetch(1, T0)  # the row at t itself is not history
    assert n_found == 2 and codes[0, :, 0].tolist() == [2, 1, 0, 0]
    codes, n_found, _ = lookup.fetch(1, T0 + 1)
    assert n_found == 3 and codes[0, :, 0].tolist() == [3, 2, 1, 0]
    codes, n_found, _ = lookup.fetch(1, T0 - 2)  # nothing before: the population prior, flagged by n == 0
    assert n_found == 0 and codes[0, 1:].tolist() == [[0, 0]] * 3


@pytest.mark.parametrize(("user_id", "t_ms", "field"), [
    (-1, T0, "user_id"), (True, T0, "user_id"), (3.0, T0, "user_id"), (2**63, T0, "user_id"), ("7", T0, "user_id"),
    (3, 0, "t_ms"), (3, -5, "t_ms"), (3, 2**64, "t_ms"), (3, float(T0), "t_ms"),
])
def test_bad_arguments_are_refused_naming_the_field(user_id: object, t_ms: object, field: str) -> None:
    store = InMemoryStore()
    _publish(store, "int8", np.arange(4, dtype=np.int64))
    reader = store.reader(FM)
    with pytest.raises(InvalidLookupError, match=field):
        reader.history_lookup(4, 8).fetch(user_id, t_ms)
    assert reader.metrics.user_lookups == 0  # refused lookups are not counted


def test_numpy_integers_are_accepted() -> None:
    store = InMemoryStore()
    _publish(store, "int8", np.arange(4, dtype=np.int64))
    lookup = store.reader(FM).history_lookup(4, 8)
    a = lookup.fetch(np.int32(2), np.uint64(T0 + 60))
    b = lookup.fetch(2, T0 + 60)
    assert a[0].tobytes() == b[0].tobytes() and a[1:] == b[1:]


def test_binding_checks_length_width_and_codec_once() -> None:
    store = InMemoryStore()
    _publish(store, "int8", np.arange(4, dtype=np.int64))
    reader = store.reader(FM)
    with pytest.raises(InvalidLookupError, match="max_len"):
        reader.history_lookup(reader.limits.max_len + 1, 8)
    with pytest.raises(FmVersionMismatchError, match="width 8"):
        reader.history_lookup(4, 9)
    with pytest.raises(FmVersionMismatchError, match="int4"):
        reader.history_lookup(4, 8, "int4")
    float16 = InMemoryStore()
    _publish(float16, "float16", np.arange(4, dtype=np.int64))
    assert float16.reader(FM).history_lookup(4, 8) is None  # decoded by the generic lookup only


def test_a_refresh_rebinds_and_rechecks_the_new_snapshot() -> None:
    store = InMemoryStore()
    _publish(store, "int8", np.arange(4, dtype=np.int64), seed=0)
    reader = store.reader(FM)
    lookup = reader.history_lookup(4, 8, "int8")
    before = lookup.fetch(1, T0 + 60)
    _publish(store, "int8", np.arange(4, dtype=np.int64), seed=1)
    assert reader.refresh()
    after = lookup.fetch(1, T0 + 60)
    hb, _, _ = reader.lookup(1, T0 + 60, 4, NO_ADS)
    assert after[2] == hb.snapshot_id != before[2] and after[0].tobytes() == hb.codes.tobytes()
    # writers refuse to change a version's codec; a snapshot that did anyway is refused all the same
    other = InMemoryStore()
    _publish(other, "int4", np.arange(4, dtype=np.int64), seed=2)
    assert reader._swap(other.current(FM))
    with pytest.raises(FmVersionMismatchError, match="int4 codes; the model was trained on int8"):
        lookup.fetch(1, T0 + 60)


def test_lookups_are_counted_as_the_generic_lookup_counts_them(monkeypatch: pytest.MonkeyPatch) -> None:
    store = InMemoryStore()
    _publish(store, "int4", np.arange(10, dtype=np.int64))
    fast_registry, slow_registry = CollectorRegistry(), CollectorRegistry()
    fast = store.reader(FM, registry=fast_registry)
    slow = _reference(store, monkeypatch, slow_registry)
    lookup = fast.history_lookup(8, 8)
    for user in range(14):
        for t in (T0, T0 + 20, T0 + 10**7):
            lookup.fetch(user, t)
            slow.lookup(user, t, 8, NO_ADS)
    assert fast.metrics.as_dict() | {"snapshot_age_ms": 0} == slow.metrics.as_dict() | {"snapshot_age_ms": 0}
    text = generate_latest(fast_registry).decode()
    assert "adrank_cache_staleness_ms_bucket" in text and "adrank_cache_fallbacks_total" in text
    slow_text = generate_latest(slow_registry).decode()
    assert [x for x in text.splitlines() if "snapshot_age" not in x] == \
        [x for x in slow_text.splitlines() if "snapshot_age" not in x]


def test_every_call_gets_its_own_output_even_across_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    store = InMemoryStore()
    _publish(store, "int8", np.arange(64, dtype=np.int64))
    reader, slow = store.reader(FM), _reference(store, monkeypatch)
    lookup = reader.history_lookup(8, 8)
    want = {u: slow.lookup(u, T0 + 60, 8, NO_ADS)[0].codes.tobytes() for u in range(64)}
    first, second = lookup.fetch(3, T0 + 60)[0], lookup.fetch(4, T0 + 60)[0]
    assert not np.shares_memory(first, second) and first.tobytes() == want[3]  # the later call left it alone
    results: list[tuple[int, np.ndarray]] = []
    failures: list[BaseException] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            got = [(u, lookup.fetch(u, T0 + 60)[0]) for u in rng.integers(0, 64, 500).tolist()]
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)
            return
        results.extend(got)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not failures and len(results) == 2_000
    assert all(codes.tobytes() == want[u] for u, codes in results)  # checked after all threads ran
    assert reader.metrics.user_lookups == 2_002  # the kernel's counter updates are never lost
