"""The registry on SQLite and on a real redis-server: the transition table, per-model invariants, audit in
the same transaction, path confinement, and instances on one store converging through the change counter."""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from pathlib import Path

import pytest
from rollout_fixtures import FEATURE_SPEC, make_manifest

from serving.rollout.errors import (
    AlreadyRegistered,
    IllegalTransition,
    LeaseLost,
    RegistryPathError,
    RegistryUnavailable,
    StateConflict,
    UnknownVersion,
)
from serving.rollout.redis_registry import RedisRegistry
from serving.rollout.registry import Fence, spec_hash
from serving.rollout.routing import CanaryRoute, RoutingTable, ShadowRoute
from serving.rollout.sqlite_registry import SqliteRegistry
from serving.rollout.states import TRANSITIONS, VersionState, check_transition
from serving.rollout.watcher import RoutingWatcher

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "integration"))
import cache_fixtures  # noqa: E402 - the suites' private redis-server

redis_server, redis_url = cache_fixtures.redis_server, cache_fixtures.redis_url


@pytest.fixture(params=["sqlite", "redis"])
def open_registry(request, tmp_path):
    """Opens registry instances on one store, as replicas do: one SQLite file, or one Redis database."""
    opened = []

    def open_one():
        if request.param == "sqlite":
            r = SqliteRegistry(tmp_path / "state")
        else:
            r = RedisRegistry(request.getfixturevalue("redis_url"), prefix="test:rollout:")
        opened.append(r)
        return r

    yield open_one
    for r in opened:
        r.close()


@pytest.fixture
def registry(open_registry):
    return open_registry()


def live_v1(registry):
    registry.register(make_manifest(1), actor="ci")
    registry.transition("vm", 1, "live", actor="ci", reason="first version")


def test_register_keeps_the_manifest_facts(registry):
    rec = registry.register(make_manifest(1, fm_version="fm-a", ne=0.81), actor="ci")
    assert rec.state is VersionState.STAGED
    assert rec.facts.fm_version == "fm-a"
    assert rec.facts.feature_spec_hash == spec_hash(FEATURE_SPEC)
    assert rec.facts.metrics["test"]["ctr_ne"] == 0.81
    assert rec.facts.parity["max_abs"] == 1e-7
    assert rec.facts.checksum == f"{1:064x}"
    assert registry.register(make_manifest(1, fm_version="fm-a"), actor="ci").registered_ms == rec.registered_ms
    with pytest.raises(AlreadyRegistered, match="vm/1: already registered with checksum"):
        registry.register(make_manifest(1, sha="f" * 64), actor="ci")


@pytest.mark.parametrize("source", list(VersionState))
def test_the_transition_table_is_enforced_for_every_pair(source):
    for target in VersionState:
        if target in TRANSITIONS[source]:
            assert check_transition("vm", 2, source, target) is target
        else:
            with pytest.raises(IllegalTransition) as exc:
                check_transition("vm", 2, source, target)
            assert (exc.value.from_state, exc.value.to_state) == (source.value, target.value)
            assert f"from {source.value} to {target.value}" in str(exc.value)


def test_illegal_transition_is_refused_and_nothing_is_written(registry):
    live_v1(registry)
    registry.register(make_manifest(2), actor="ci")
    registry.transition("vm", 2, "retired", actor="ops", reason="never mind")
    before = (registry.change_counter(), len(registry.audit()))
    with pytest.raises(IllegalTransition, match="vm/2: cannot go from retired to canary"):
        registry.transition("vm", 2, "canary", actor="ops", reason="x")
    with pytest.raises(IllegalTransition, match="to bogus"):
        registry.transition("vm", 2, "bogus", actor="ops", reason="x")
    with pytest.raises(UnknownVersion, match="vm/7: not registered"):
        registry.transition("vm", 7, "canary", actor="ops", reason="x")
    assert (registry.change_counter(), len(registry.audit())) == before
    assert registry.get("vm", 2).state is VersionState.RETIRED


def test_one_live_one_canary_per_model(registry):
    live_v1(registry)
    for v in (2, 3):
        registry.register(make_manifest(v), actor="ci")
    with pytest.raises(StateConflict, match="version 1 is already live"):
        registry.transition("vm", 2, "live", actor="ops", reason="x")
    registry.transition("vm", 2, "canary", actor="ops", reason="start")
    with pytest.raises(StateConflict, match="version 2 is already canary"):
        registry.transition("vm", 3, "canary", actor="ops", reason="x")
    registry.register(make_manifest(1, name="other"), actor="ci")  # another model is independent
    registry.transition("other", 1, "live", actor="ops", reason="first")
    assert registry.models() == ["other", "vm"]


def test_a_full_rollout_is_audited_with_who_why_and_metrics(registry):
    live_v1(registry)
    registry.register(make_manifest(2), actor="ci")
    registry.transition("vm", 2, "shadow", actor="alice", reason="mirror first")
    registry.set_route("vm", shadow_sample_rate=0.1, actor="alice", reason="10% of requests")
    registry.transition("vm", 2, "canary", actor="alice", reason="start canary")
    for w in (10, 50):
        registry.set_route("vm", canary_weight=w, actor="analysis", reason=f"step to {w}", metrics={"psi": 0.01})
    assert registry.routing("vm") == RoutingTable(model="vm", live=1,
                                                  canary=CanaryRoute(version=2, weight=50, salt="vm/2"))
    registry.promote("vm", 2, actor="analysis", reason="all checks passed", metrics={"psi": 0.02, "p99_ratio": 1.01})
    assert registry.routing("vm") == RoutingTable(model="vm", live=2)
    assert [r.state.value for r in registry.versions("vm")] == ["retired", "live"]
    log = registry.audit("vm")
    assert [(e.version, e.from_state and e.from_state.value, e.to_state.value, e.weight) for e in log] == [
        (1, None, "staged", None), (1, "staged", "live", None), (2, None, "staged", None),
        (2, "staged", "shadow", None), (2, "shadow", "shadow", 0.1), (2, "shadow", "canary", None),
        (2, "canary", "canary", 10.0), (2, "canary", "canary", 50.0),
        (1, "live", "retired", None), (2, "canary", "live", None)]
    last = log[-1]
    assert (last.actor, last.reason, dict(last.metrics)) == ("analysis", "all checks passed",
                                                             {"psi": 0.02, "p99_ratio": 1.01})
    assert [e.seq for e in log] == sorted(e.seq for e in log) and last.at_ms > 0
    assert registry.audit("vm", version=1, since_seq=log[1].seq)[0].to_state is VersionState.RETIRED


def test_rollback_of_a_canary_and_of_a_promoted_version(registry):
    live_v1(registry)
    registry.register(make_manifest(2), actor="ci")
    registry.transition("vm", 2, "canary", actor="ops", reason="start")
    registry.set_route("vm", canary_weight=10, actor="analysis", reason="step")
    registry.rollback("vm", 2, actor="analysis", reason="psi 0.31 > 0.2 in 3 of 3 windows", metrics={"psi": 0.31})
    assert registry.routing("vm") == RoutingTable(model="vm", live=1)
    assert registry.route_settings("vm").canary_weight == 0
    assert registry.audit("vm")[-1].reason.startswith("psi 0.31")

    registry.register(make_manifest(3), actor="ci")
    registry.transition("vm", 3, "canary", actor="ops", reason="start")
    registry.promote("vm", 3, actor="ops", reason="good")
    registry.rollback("vm", 3, actor="ops", reason="complaints after promotion")  # KServe: back to the last 100%
    assert registry.routing("vm").live == 1
    assert registry.get("vm", 3).state is VersionState.ROLLED_BACK
    with pytest.raises(StateConflict, match="no retired previous live version"):
        registry.rollback("vm", 1, actor="ops", reason="x")


def test_route_changes_need_their_arm_and_valid_values(registry):
    live_v1(registry)
    with pytest.raises(StateConflict, match="no canary version"):
        registry.set_route("vm", canary_weight=10, actor="ops", reason="x")
    registry.register(make_manifest(2), actor="ci")
    registry.transition("vm", 2, "canary", actor="ops", reason="start", salt="vm-2-spring")
    with pytest.raises(Exception, match="canary.weight"):
        registry.set_route("vm", canary_weight=150, actor="ops", reason="x")
    registry.register(make_manifest(3), actor="ci")
    registry.transition("vm", 3, "shadow", actor="ops", reason="mirror")  # must not reshuffle the canary
    registry.set_route("vm", canary_weight=20, shadow_sample_rate=0.5, actor="ops", reason="both")
    assert registry.routing("vm") == RoutingTable(
        model="vm", live=1, canary=CanaryRoute(version=2, weight=20, salt="vm-2-spring"),
        shadow=ShadowRoute(version=3, sample_rate=0.5, salt="vm/3"))
    with pytest.raises(ValueError, match="actor"):
        registry.transition("vm", 3, "retired", actor="", reason="x")


def test_audit_log_is_append_only_in_the_database(tmp_path):
    registry = SqliteRegistry(tmp_path / "state")
    live_v1(registry)
    db = sqlite3.connect(registry.path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE audit SET reason = 'rewritten'")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM audit")
    db.close()
    assert len(registry.audit()) == 2
    registry.close()


def test_the_file_stays_inside_the_state_folder(tmp_path):
    for bad in ("../escape.sqlite3", "/tmp/x.sqlite3", "sub/x.sqlite3", "..", ""):
        with pytest.raises(RegistryPathError, match="plain file name"):
            SqliteRegistry(tmp_path / "state", bad)
    (tmp_path / "state").mkdir(exist_ok=True)
    (tmp_path / "state" / "link.sqlite3").symlink_to(tmp_path / "elsewhere.sqlite3")
    with pytest.raises(RegistryPathError, match="outside"):
        SqliteRegistry(tmp_path / "state", "link.sqlite3")


def test_two_instances_on_one_store_converge_through_the_counter(open_registry):
    a, b = open_registry(), open_registry()
    watcher = RoutingWatcher(b)
    assert watcher.refresh() and watcher.table("vm") is None
    assert not watcher.refresh()  # nothing changed: no rebuild
    live_v1(a)
    a.register(make_manifest(2), actor="ci")
    a.transition("vm", 2, "canary", actor="ops", reason="start")
    a.set_route("vm", canary_weight=10, actor="ops", reason="step")
    assert b.change_counter() == a.change_counter() > 0
    assert watcher.refresh()
    assert watcher.table("vm") == RoutingTable(model="vm", live=1, canary=CanaryRoute(version=2, weight=10,
                                                                                       salt="vm/2"))
    b.set_route("vm", canary_weight=50, actor="ops", reason="step from the other replica")
    assert a.routing("vm").canary.weight == 50
    assert [e.actor for e in a.audit()] == [e.actor for e in b.audit()]


def test_concurrent_writers_serialise(open_registry):
    """Ten replicas starting different canaries at once: exactly one canary, a conflict for the others."""
    seed = open_registry()
    live_v1(seed)
    for v in range(2, 12):
        seed.register(make_manifest(v), actor="ci")
    errors: list[Exception] = []

    replicas = {v: open_registry() for v in range(2, 12)}

    def start(v: int) -> None:
        try:
            replicas[v].transition("vm", v, "canary", actor=f"replica-{v}", reason="race")
        except StateConflict as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(v,)) for v in range(2, 12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    canaries = [r.version for r in seed.versions("vm") if r.state is VersionState.CANARY]
    assert len(canaries) == 1 and len(errors) == 9
    assert sum(e.to_state is VersionState.CANARY for e in seed.audit("vm")) == 1
    seqs = [e.seq for e in seed.audit()]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # one total order, no gaps or duplicates


def test_state_survives_reopening(tmp_path):
    r = SqliteRegistry(tmp_path / "state")
    live_v1(r)
    r.close()
    again = SqliteRegistry(tmp_path / "state")
    assert again.routing("vm") == RoutingTable(model="vm", live=1)
    assert again.routing_tables() == {"vm": RoutingTable(model="vm", live=1)}
    again.close()


def test_a_polling_replica_converges_within_a_second(open_registry):
    import asyncio
    import time

    writer, replica = open_registry(), open_registry()
    live_v1(writer)
    watcher = RoutingWatcher(replica)
    watcher.refresh()

    async def scenario() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(watcher.poll(0.05, stop))
        await asyncio.sleep(0.1)
        writer.register(make_manifest(2), actor="ci")
        writer.transition("vm", 2, "canary", actor="ops", reason="start")
        writer.set_route("vm", canary_weight=10, actor="ops", reason="step")
        t0 = time.monotonic()
        while watcher.table("vm").canary is None or watcher.table("vm").canary.weight != 10:
            await asyncio.sleep(0.01)
            assert time.monotonic() - t0 < 5, "replica did not converge"
        stop.set()
        await task
        return time.monotonic() - t0

    assert asyncio.run(scenario()) < 1.0


def test_an_unreachable_registry_is_unavailable_and_replicas_keep_their_tables(tmp_path):
    import asyncio

    gone = RedisRegistry("redis://127.0.0.1:9/0", socket_timeout_s=0.2)
    with pytest.raises(RegistryUnavailable) as exc:
        gone.change_counter()
    assert exc.value.code.name == "UNAVAILABLE"
    with pytest.raises(RegistryUnavailable):
        gone.transition("vm", 1, "live", actor="ops", reason="x")
    gone.close()

    registry = SqliteRegistry(tmp_path / "state")
    live_v1(registry)
    watcher = RoutingWatcher(registry)
    watcher.refresh()
    registry.change_counter = lambda: (_ for _ in ()).throw(RegistryUnavailable("down"))  # type: ignore[method-assign]

    async def briefly() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(watcher.poll(0.01, stop))
        await asyncio.sleep(0.05)
        stop.set()
        await task

    asyncio.run(briefly())
    assert watcher.table("vm") == RoutingTable(model="vm", live=1)
    registry.close()


# -- shared analysis state: window statistics with a TTL, the analysis lease ---------------------------------
def test_shared_values_expire_and_match_by_prefix_only(open_registry):
    import time

    a, b = open_registry(), open_registry()
    a.put_shared("stats:vm:2.x:r1", "one", ttl_ms=300)
    b.put_shared("stats:vm:2.x:r2", "two", ttl_ms=None)
    a.put_shared("stats:vm2:2.x:r3", "other model", ttl_ms=None)
    a.put_shared("stats:v_:2.x:r4", "a prefix wildcard must not match", ttl_ms=None)
    assert b.get_shared("stats:vm:2.x:") == {"stats:vm:2.x:r1": "one", "stats:vm:2.x:r2": "two"}
    assert a.get_shared("stats:v_:2.x:") == {"stats:v_:2.x:r4": "a prefix wildcard must not match"}
    time.sleep(0.45)
    assert b.get_shared("stats:vm:2.x:") == {"stats:vm:2.x:r2": "two"}
    a.delete_shared("stats:vm:2.x:r2")
    assert b.get_shared("stats:vm:2.x:") == {}
    assert a.change_counter() == 0  # shared state moves no traffic: replicas do not rebuild tables for it


def test_one_replica_holds_a_lease_until_it_expires_or_is_released(open_registry):
    import time

    a, b = open_registry(), open_registry()
    assert a.acquire_lease("analysis:vm:1", "replica-a", 400)
    assert not b.acquire_lease("analysis:vm:1", "replica-b", 400)
    assert a.acquire_lease("analysis:vm:1", "replica-a", 400)  # a renewal
    time.sleep(0.55)  # a stopped renewing: b takes over, and a's late renewal is refused
    assert b.acquire_lease("analysis:vm:1", "replica-b", 400)
    assert not a.acquire_lease("analysis:vm:1", "replica-a", 400)
    a.release_lease("analysis:vm:1", "replica-a")  # not a's to release: b keeps it
    assert not a.acquire_lease("analysis:vm:1", "replica-a", 400)
    b.release_lease("analysis:vm:1", "replica-b")
    assert a.acquire_lease("analysis:vm:1", "replica-a", 400)


def test_racing_replicas_elect_exactly_one(open_registry):
    regs = [open_registry() for _ in range(4)]
    won: list[str] = []
    barrier = threading.Barrier(len(regs))

    def race(i: int) -> None:
        barrier.wait()
        if regs[i].acquire_lease("analysis:vm:9", f"r{i}", 5_000):
            won.append(f"r{i}")

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(regs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1, won


def test_a_decision_for_a_canary_that_moved_on_is_refused_in_the_transaction(registry):
    live_v1(registry)
    registry.register(make_manifest(2), actor="ci")
    registry.transition("vm", 2, "canary", actor="ci", reason="start")
    registry.promote("vm", 2, actor="leader-b", reason="all checks passed", expect=VersionState.CANARY)
    before = len(registry.audit("vm"))
    with pytest.raises(StateConflict, match="vm/2: is live, not canary"):  # a stale leader's late rollback
        registry.rollback("vm", 2, actor="leader-a", reason="late", expect=VersionState.CANARY)
    with pytest.raises(StateConflict, match="not canary"):
        registry.promote("vm", 2, actor="leader-a", reason="late", expect=VersionState.CANARY)
    assert registry.routing("vm").live == 2 and len(registry.audit("vm")) == before


def test_a_stalled_leaders_late_weight_step_is_fenced_by_its_lease(open_registry):
    """A leader stalled past its lease between its lease check and its write: the successor took the lease,
    so the old leader's weight step (and promotion) is refused inside the write transaction, nothing
    written; the successor's fenced step applies; and an expired lease fences every writer."""
    a, b = open_registry(), open_registry()
    live_v1(a)
    a.register(make_manifest(2), actor="ci")
    a.transition("vm", 2, "canary", actor="ci", reason="start")
    a.set_route("vm", canary_weight=10, actor="ci", reason="first step")
    lease = "analysis:vm:1"
    assert a.acquire_lease(lease, "replica-a", 300)
    a.set_route("vm", canary_weight=20, actor="analysis", reason="a leads", fence=Fence(lease, "replica-a"))
    time.sleep(0.4)  # replica-a stalls past its lease; replica-b takes over
    assert b.acquire_lease(lease, "replica-b", 5_000)
    before, counter = len(a.audit("vm")), a.change_counter()
    with pytest.raises(LeaseLost, match="held by replica-b, not replica-a's"):
        a.set_route("vm", canary_weight=50, actor="analysis", reason="late step", fence=Fence(lease, "replica-a"))
    with pytest.raises(LeaseLost):
        a.promote("vm", 2, actor="analysis", reason="late promotion", expect=VersionState.CANARY,
                  fence=Fence(lease, "replica-a"))
    assert (a.routing("vm").canary.weight, len(a.audit("vm")), a.change_counter()) == (20, before, counter)
    b.set_route("vm", canary_weight=50, actor="analysis", reason="b leads", fence=Fence(lease, "replica-b"))
    assert a.routing("vm").canary.weight == 50
    b.release_lease(lease, "replica-b")
    with pytest.raises(LeaseLost, match="has expired"):
        b.rollback("vm", 2, actor="analysis", reason="no lease", expect=VersionState.CANARY,
                   fence=Fence(lease, "replica-b"))
    assert a.get("vm", 2).state is VersionState.CANARY
