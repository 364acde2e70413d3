"""Routing: sticky canary assignment by a stable hash, pins win, shadow sampling, table validation."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from serving.rollout.errors import RoutingError
from serving.rollout.routing import (
    BUCKETS,
    CanaryRoute,
    RoutingTable,
    ShadowRoute,
    bucket,
    choose,
    shadow_version,
)

ROOT = str(Path(__file__).resolve().parents[4])
GOLDEN = [2184, 9250, 9650, 4381]  # bucket(u, "vm/4") for u in (0, 1, 42, 10**12)
USERS = range(20_000)
STEPS = (1, 5, 10, 25, 50, 75, 100)


def table(weight: float, salt: str = "vm/4") -> RoutingTable:
    return RoutingTable(model="vm", live=3, canary=CanaryRoute(version=4, weight=weight, salt=salt))


def canary_users(weight: float, salt: str = "vm/4") -> set[int]:
    t = table(weight, salt)
    return {u for u in USERS if choose(t, u, None).arm == "canary"}


def test_every_user_sees_one_arm_across_calls():
    t = table(10)
    for u in USERS:
        seen = {choose(t, u, None) for _ in range(5)}
        assert len(seen) == 1, f"user {u} saw {seen}"


def test_canary_users_stay_in_the_canary_as_the_weight_steps_up():
    previous: set[int] = set()
    for w in STEPS:
        now = canary_users(w)
        assert previous <= now, f"{len(previous - now)} users left the canary when the weight rose to {w}"
        previous = now
    assert previous == set(USERS)  # 100%: everyone


@pytest.mark.parametrize("weight", [1, 10, 50, 90])
def test_canary_share_is_within_a_binomial_bound_of_the_weight(weight):
    n, p = len(USERS), weight / 100
    share = len(canary_users(weight)) / n
    bound = 4 * math.sqrt(p * (1 - p) / n)  # 4 sigma: a false alarm about once in 16,000 runs
    assert abs(share - p) <= bound, f"share {share:.4f} vs weight {p:.2f} (bound ±{bound:.4f})"


def test_weight_zero_sends_nobody_and_a_new_salt_draws_new_users():
    assert canary_users(0) == set()
    a, b = canary_users(10, "vm/4"), canary_users(10, "vm/4-retry")
    overlap = len(a & b) / len(a)
    assert 0.05 < overlap < 0.15  # independent draws overlap by about the weight itself


def test_pins_win_over_the_table():
    t = table(100)
    assert choose(t, 7, pinned_version=3) == (3, "pinned")
    assert choose(t, 7, pinned_version=4) == (4, "pinned")
    assert choose(t, 7, pinned_version=9).arm == "pinned"  # whether 9 is loaded is the backend's NOT_FOUND
    assert choose(t, 7, None) == (4, "canary")
    assert choose(RoutingTable(model="vm", live=3), 7, None) == (3, "live")


def test_buckets_are_stable_across_processes_and_hash_seeds():
    # fixed values: the assignment must not depend on the process, the machine or the Python version
    assert [bucket(u, "vm/4") for u in (0, 1, 42, 10**12)] == GOLDEN
    code = ("from serving.rollout.routing import bucket; "
            "print([bucket(u, 'vm/4') for u in (0, 1, 42, 10**12)])")
    for seed in ("0", "12345"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={"PYTHONHASHSEED": seed, "PATH": ""}, cwd=ROOT)
        assert out.stdout.strip() == str(GOLDEN)
    assert all(0 <= bucket(u, "s") < BUCKETS for u in range(1000))


def test_shadow_samples_live_requests_only_at_its_rate():
    t = RoutingTable(model="vm", live=3, canary=CanaryRoute(version=4, weight=10, salt="vm/4"),
                     shadow=ShadowRoute(version=5, sample_rate=0.2, salt="vm/5"))
    picks = [shadow_version(t, "live", f"req-{i}") for i in range(20_000)]
    share = sum(p == 5 for p in picks) / len(picks)
    assert abs(share - 0.2) <= 4 * math.sqrt(0.2 * 0.8 / len(picks))
    assert set(picks) == {None, 5}
    assert shadow_version(t, "canary", "req-1") is None and shadow_version(t, "pinned", "req-1") is None
    assert [shadow_version(t, "live", f"req-{i}") for i in range(100)] == picks[:100]  # deterministic
    assert shadow_version(table(10), "live", "req-1") is None


@pytest.mark.parametrize("build, field", [
    (lambda: CanaryRoute(version=4, weight=101, salt="s"), "canary.weight"),
    (lambda: CanaryRoute(version=4, weight=float("nan"), salt="s"), "canary.weight"),
    (lambda: CanaryRoute(version=0, weight=10, salt="s"), "canary.version"),
    (lambda: CanaryRoute(version=4, weight=10, salt=""), "canary.salt"),
    (lambda: ShadowRoute(version=4, sample_rate=1.5, salt="s"), "shadow.sample_rate"),
    (lambda: RoutingTable(model="vm", live=4, canary=CanaryRoute(version=4, weight=1, salt="s")), "canary.version"),
    (lambda: RoutingTable(model="", live=4), "model"),
    (lambda: RoutingTable(model="vm", live=True), "live"),
])
def test_invalid_tables_name_the_field(build, field):
    with pytest.raises(RoutingError) as exc:
        build()
    assert exc.value.field == field and str(exc.value).startswith(field)


def test_table_round_trips_through_a_dict():
    t = RoutingTable(model="vm", live=3, canary=CanaryRoute(version=4, weight=10, salt="vm/4"),
                     shadow=ShadowRoute(version=5, sample_rate=0.1, salt="vm/5"))
    assert RoutingTable.from_dict(t.to_dict()) == t
    assert t.versions() == {3, 4, 5}
    with pytest.raises(RoutingError, match="live: is required"):
        RoutingTable.from_dict({"model": "vm"})
