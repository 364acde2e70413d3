"""A Redis Cluster primary killed (SIGKILL) while a reader serves lookups: typed, fast errors, then recovery.

The ranking service turns CacheUnavailableError into a degraded answer (gRPC UNAVAILABLE today, the population
prior once issue 13 lands), so at the cache layer "degraded, not errors" means: users on the dead shard get
CacheUnavailableError quickly (never another exception, never wrong data), users on live shards keep being
served while the cluster allows it, and every user is served again after failover without restarting the reader.

Each scenario prints its figures (time to first error, time to recovery, error counts, error latency and the
100 ms buckets with errors); run with `-s` to see them:

    .venv/bin/python -m pytest tests/integration/test_cache_redis_failover.py -m slow -s
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pytest

from embedding_cache import CacheUnavailableError, RedisWriter, open_reader
from embedding_cache.redis_client import READER, connect
from embedding_cache.redis_keys import AD_BUCKETS, USER_BUCKETS, BucketKeys, RedisKeys
from embedding_cache.redis_local import LocalRedisCluster, RedisNotInstalledError

T0 = 1_700_000_000_000
USERS = np.arange(600)
RECOVERY_BOUND_S = 15.0  # node timeout 2 s + election; section 4 of the load-and-scale notes measured 4.1 s
SETTLED_S = 1.0  # all reads ok for this long after the last error = recovered


@dataclass
class Scenario:
    name: str
    replicas: int
    full_coverage: bool
    restart_after_s: float | None = None  # the killed node comes back (with its AOF) this long after the kill


SCENARIOS = [
    Scenario("replica promoted (3+3, full coverage: Redis default)", replicas=1, full_coverage=True),
    Scenario("replica promoted (3+3, cluster-require-full-coverage no)", replicas=1, full_coverage=False),
    Scenario("node returns (3+0, AOF, cluster-require-full-coverage no)", replicas=0, full_coverage=False,
             restart_after_s=3.0),
]


@dataclass
class Record:
    t: float  # seconds since the kill (negative before)
    dead_user: bool
    outcome: str  # ok | unavailable | other
    latency_s: float
    cause: str = ""  # the redis-py exception behind a CacheUnavailableError


@dataclass
class Run:
    records: list[Record] = field(default_factory=list)
    other: list[str] = field(default_factory=list)


def _read_loop(url: str, dead: list[int], live: list[int], t_kill: list[float], stop: threading.Event,
               run: Run) -> None:
    reader = open_reader("redis", url, "fm-v1")
    i = 0
    while not stop.is_set():
        dead_user = i % 2 == 0
        pool = dead if dead_user else live
        user = pool[(i // 2) % len(pool)]
        i += 1
        start, cause = time.perf_counter(), ""
        try:
            hb, _, _ = reader.lookup(user, T0 + 100, 8, np.zeros(0, np.int64))
            good = hb.lengths[0] == 1 and not hb.fallback[0] and abs(float(hb.codes[0, 0, 0]) - user / 1000) < 1e-2
            outcome = "ok" if good else "other"
            if not good:
                run.other.append(f"wrong data for user {user}: {hb.lengths} {hb.codes[0, 0, 0]}")
        except CacheUnavailableError as exc:
            outcome, cause = "unavailable", type(exc.__cause__).__name__
        except Exception as exc:  # noqa: BLE001 - every other exception is what this test must not see
            outcome = "other"
            run.other.append(repr(exc))
        end = time.perf_counter()
        run.records.append(Record(end - (t_kill[0] or end + 1e9), dead_user, outcome, end - start, cause))
        time.sleep(0.001)  # ~500 reads/s: continuous load without taking a whole core from the others
    reader.close()


def _figures(run: Run) -> dict:
    after = [r for r in run.records if r.t >= 0]
    errors = [r for r in after if r.outcome != "ok"]
    last_error = max((r.t for r in errors), default=None)
    first_live_error = min((r.t for r in errors if not r.dead_user), default=None)
    recovered = min((r.t for r in after if last_error is not None and r.t > last_error), default=None)
    latencies = sorted(r.latency_s for r in errors) or [0.0]
    return {
        "reads_after_kill": len(after),
        "first_error_s": min((r.t for r in errors), default=None),
        "recovered_s": recovered,
        "errors": len(errors),
        "errors_dead_users": sum(r.dead_user for r in errors),
        "errors_live_users": sum(not r.dead_user for r in errors),
        "live_ok_before_first_live_error": sum(not r.dead_user and r.outcome == "ok" and
                                               (first_live_error is None or r.t < first_live_error) for r in after),
        "first_live_error_s": first_live_error,
        "error_latency_p50_ms": 1000 * latencies[len(latencies) // 2],
        "error_latency_max_ms": 1000 * latencies[-1],
        "ok_latency_p50_ms": 1000 * float(np.median([r.latency_s for r in after if r.outcome == "ok"] or [0])),
        "causes": dict(Counter(r.cause for r in errors)),
    }


def _print(scenario: Scenario, run: Run, fig: dict) -> None:
    print(f"\n== {scenario.name}")
    print("   " + ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in fig.items()))
    buckets: dict[int, dict[str, int]] = {}
    for r in run.records:
        if r.t >= 0:
            b = buckets.setdefault(int(r.t * 10), {"ok": 0, "unavailable": 0, "other": 0})
            b[r.outcome] += 1
    print("   100 ms buckets with errors (s since kill: ok/unavailable/other):")
    rows = [f"{k / 10:.1f}:{v['ok']}/{v['unavailable']}/{v['other']}" for k, v in sorted(buckets.items())
            if v["unavailable"] or v["other"]]
    for i in range(0, len(rows), 8):
        print("   " + "  ".join(rows[i:i + 8]))


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name.split(" (")[0].replace(" ", "-")
                         + ("-full" if s.full_coverage else "-partial"))
def test_killed_primary_gives_fast_typed_errors_for_its_users_only_then_recovers(scenario: Scenario) -> None:
    try:
        cluster = LocalRedisCluster(primaries=3, replicas=scenario.replicas, node_timeout_ms=2000,
                                    full_coverage=scenario.full_coverage,
                                    appendonly=scenario.restart_after_s is not None)
    except RedisNotInstalledError as exc:
        pytest.skip(str(exc))
    with cluster:
        writer = RedisWriter(cluster.url, "fm-v1", dim=4, codec="int8")
        writer.append_user_codes(USERS, np.full(len(USERS), T0), np.repeat((USERS / 1000)[:, None], 4, 1))
        writer.publish()
        writer.close()
        cluster.wait_replicas_synced()
        probe, keys = connect(cluster.url, READER), RedisKeys("adrank", "fm-v1")
        names = BucketKeys(keys, "s000001", USER_BUCKETS, AD_BUCKETS)  # the key names the reader builds
        owner = {int(u): probe.get_node_from_key(names.user(int(u))).port for u in USERS}
        probe.close()
        victim = owner[0]
        dead = [u for u, port in owner.items() if port == victim]
        live = [u for u, port in owner.items() if port != victim]
        assert dead and live

        t_kill: list[float] = [0.0]
        stop, run = threading.Event(), Run()
        thread = threading.Thread(target=_read_loop, args=(cluster.url, dead, live, t_kill, stop, run))
        thread.start()
        time.sleep(0.5)
        t_kill[0] = time.perf_counter()
        cluster.kill(victim)
        restarted = False
        deadline = t_kill[0] + RECOVERY_BOUND_S + SETTLED_S
        while time.perf_counter() < deadline:
            time.sleep(0.1)
            now = time.perf_counter() - t_kill[0]
            if scenario.restart_after_s is not None and not restarted and now >= scenario.restart_after_s:
                cluster.restart(victim)
                restarted = True
            recent = [r for r in run.records if r.t >= now - SETTLED_S]
            errors = [r for r in run.records if r.t >= 0 and r.outcome != "ok"]
            if errors and recent and all(r.outcome == "ok" for r in recent) and now - errors[-1].t > SETTLED_S:
                break
        stop.set()
        thread.join(timeout=10)

    fig = _figures(run)
    _print(scenario, run, fig)
    assert run.other == [], run.other[:5]
    assert all(r.outcome == "ok" for r in run.records if r.t < 0)
    assert fig["errors_dead_users"] > 0  # the kill was seen
    assert fig["live_ok_before_first_live_error"] > 0  # live shards kept answering after the kill
    if not scenario.full_coverage:
        assert fig["errors_live_users"] == 0  # without full coverage, live shards never stop
    assert fig["recovered_s"] is not None and fig["recovered_s"] < RECOVERY_BOUND_S
    tail = [r for r in run.records if r.t > fig["recovered_s"]]
    assert tail and all(r.outcome == "ok" for r in tail)  # every user served again, same reader, no restart
    assert fig["error_latency_max_ms"] < 1000  # bounded by the reader's 0.25/0.5 s timeouts, not multi-second stalls
