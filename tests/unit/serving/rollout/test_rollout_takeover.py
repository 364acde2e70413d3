"""Which replica leads a rollout's analysis, on a real SQLite registry shared by two runtimes: a stored
rollout whose lease is free is taken over by exactly one replica; one whose leader still renews, or
that an operator ended, is never taken over; a replica's published counts are pooled by the other."""

from __future__ import annotations

import numpy as np
from rollout_fixtures import make_manifest

from serving.rollout.analysis import AnalysisState
from serving.rollout.pooled import ArmStats
from serving.rollout.runtime import RolloutRuntime
from serving.rollout.shared import RolloutDoc
from serving.rollout.spec import RolloutSpec
from serving.rollout.sqlite_registry import SqliteRegistry

SPEC = RolloutSpec(model="vm", version=2, steps=(10.0, 50.0), interval_s=60)


def _runtime(state_dir, name: str) -> RolloutRuntime:
    rt = RolloutRuntime(SqliteRegistry(state_dir), backend=None, lease_s=30.0, replica_id=name)  # type: ignore[arg-type]
    rt.watcher.refresh()
    return rt


def _canary(state_dir) -> None:
    reg = SqliteRegistry(state_dir)
    reg.register(make_manifest(1), actor="ci")
    reg.transition("vm", 1, "live", actor="ci", reason="first")
    reg.register(make_manifest(2), actor="ci")
    reg.transition("vm", 2, "canary", actor="ci", reason="start", salt=SPEC.canary_salt)
    reg.set_route("vm", canary_weight=10, actor="ci", reason="first step")
    reg.close()


def test_a_free_lease_is_taken_over_once_and_a_renewed_or_ended_one_never(tmp_path):
    _canary(tmp_path)
    a, b = _runtime(tmp_path, "a"), _runtime(tmp_path, "b")
    doc = RolloutDoc(SPEC, 1, AnalysisState(SPEC, step=1, failed_windows=1, windows=3), leader="gone")
    a.shared.save(doc)
    a.share({})
    b.share({})
    assert "vm" in a.rollouts and "vm" not in b.rollouts  # a polled first and holds the lease now
    taken = a.rollouts["vm"]
    assert (taken.state.step, taken.state.failed_windows, taken.state.windows) == (1, 1, 3)
    assert b.shared.load("vm").leader == "a"
    b.share({})  # a keeps renewing: b never takes it
    assert "vm" not in b.rollouts

    a._end("vm", "rolled_back")  # an operator verb through a: the stored rollout is ended, the lease freed
    c = _runtime(tmp_path, "c")
    c.share({})
    assert "vm" not in c.rollouts and c.shared.load("vm").ended == "rolled_back"


def test_published_counts_are_pooled_by_the_leader(tmp_path):
    _canary(tmp_path)
    a, b = _runtime(tmp_path, "a"), _runtime(tmp_path, "b")
    doc = RolloutDoc(SPEC, 2, AnalysisState(SPEC), leader="a")
    a._begin(doc, {})
    stats = {arm: ArmStats() for arm in ("live", "canary")}
    for i in range(40):
        stats["live"].add(2.0, True, np.array([0.05, 0.1]))
        stats["canary"].add(3.0, i != 0, np.array([0.05, 0.1]))
    b.share({"vm": (doc.canary, stats)})  # b publishes; it does not lead
    mine = {arm: ArmStats() for arm in ("live", "canary")}
    for _ in range(10):
        mine["canary"].add(2.5, True, np.array([0.07]))
    a.rollouts["vm"] = type("R", (), {"doc": doc, "spec": SPEC})()
    window, per_replica = a._pooled(a.rollouts["vm"], {"vm": (doc.canary, mine)})
    assert per_replica == {"a": {"live": 0, "canary": 10}, "b": {"live": 40, "canary": 40}}
    assert (window.canary.requests, window.canary.errors, window.live.requests) == (50, 1, 40)
    assert window.labels_note.startswith("no label source")
    again, _ = a._pooled(a.rollouts["vm"], {"vm": (doc.canary, mine)})  # nothing new since: an empty window
    assert again.canary.requests == 0 and again.live.requests == 0


def test_a_graceful_stop_hands_the_analysis_on_without_waiting_for_the_lease(tmp_path):
    import asyncio

    _canary(tmp_path)
    a, b = _runtime(tmp_path, "a"), _runtime(tmp_path, "b")
    a.shared.save(RolloutDoc(SPEC, 3, AnalysisState(SPEC), leader="gone"))
    a.share({})
    assert "vm" in a.rollouts
    b.share({})
    assert "vm" not in b.rollouts  # the lease lasts 30 s
    asyncio.run(a.close())
    b.share({})
    assert "vm" in b.rollouts and b.shared.load("vm").leader == "b"
