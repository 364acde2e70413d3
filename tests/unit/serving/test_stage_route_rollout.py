"""route with a rollout router: the registry's table decides live vs canary per user (sticky by hash of
user id and the rollout's salt), pins still win, and a routed version this replica cannot serve yet
falls back instead of failing the request."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import serving_fakes as fakes

from serving.config import ServerConfig
from serving.history import HistoryProvider
from serving.pipeline import RequestContext
from serving.pipeline.route import RouteStage, routed
from serving.rollout.routing import CanaryRoute, RoutingTable
from serving.validation import parse_request

USERS = range(10_000)


class Tables:
    """A router as the watcher is one: a dict of tables by model name."""

    def __init__(self, *tables: RoutingTable) -> None:
        self.tables = {t.model: t for t in tables}

    def table(self, model: str) -> RoutingTable | None:
        return self.tables.get(model)


def _parsed(**fields):
    return parse_request(fakes.request(2, **fields), ServerConfig(), "vm", now_ms=fakes.NOW_MS)


def _table(weight: float, salt: str = "vm/2") -> RoutingTable:
    return RoutingTable(model="vm", live=1, canary=CanaryRoute(version=2, weight=weight, salt=salt))


def _backend(*versions: int) -> fakes.FakeBackend:
    return fakes.FakeBackend(*(fakes.handle(version=v) for v in versions))


def _arms(router: Tables, backend, users=USERS) -> dict[int, tuple[int, str]]:
    base, history = _parsed(), HistoryProvider()
    out = {}
    for u in users:
        handle, arm = routed(backend, history, router, replace(base, user_id=u))
        out[u] = (handle.version, arm)
    return out


def test_canary_users_are_sticky_over_10000_users_and_only_grow_from_10_to_50_percent():
    backend = _backend(1, 2)
    at10 = _arms(Tables(_table(10)), backend)
    again = _arms(Tables(_table(10)), backend)
    at50 = _arms(Tables(_table(50)), backend)
    assert at10 == again  # every user sees one arm on every call at a given weight
    assert {arm for _, arm in at10.values()} == {"live", "canary"}
    assert all((v, a) in {(1, "live"), (2, "canary")} for v, a in at10.values())
    canary10 = {u for u, (_, a) in at10.items() if a == "canary"}
    canary50 = {u for u, (_, a) in at50.items() if a == "canary"}
    assert canary10 <= canary50  # nobody on the canary at 10 % leaves it at 50 %
    # binomial share within 4 sigma (sd = sqrt(p(1-p)/n): 0.3 % at 10 %, 0.5 % at 50 %)
    assert abs(len(canary10) / 1e4 - 0.10) < 0.012 and abs(len(canary50) / 1e4 - 0.50) < 0.02


def test_another_salt_draws_other_users():
    backend = _backend(1, 2)
    a = {u for u, (_, arm) in _arms(Tables(_table(10)), backend).items() if arm == "canary"}
    b = {u for u, (_, arm) in _arms(Tables(_table(10, salt="vm/2-retry")), backend).items() if arm == "canary"}
    assert len(a & b) < 0.25 * len(a)  # independent draws share about 10 % of their users


def test_pin_wins_over_the_table_and_is_recorded_as_pinned():
    router, backend = Tables(_table(100)), _backend(1, 2, 3)
    handle, arm = routed(backend, HistoryProvider(), router, _parsed(model={"version": 3}))
    assert (handle.version, arm) == (3, "pinned")


def test_without_a_table_the_newest_version_serves_on_the_live_arm():
    handle, arm = routed(_backend(1, 2), HistoryProvider(), Tables(), _parsed())
    assert (handle.version, arm) == (2, "live")


def test_table_live_wins_over_the_newest_loaded_version():
    table = RoutingTable(model="vm", live=1)
    handle, arm = routed(_backend(1, 2, 3), HistoryProvider(), Tables(table), _parsed())
    assert (handle.version, arm) == (1, "live")


def test_a_canary_not_loaded_here_yet_falls_back_to_live_and_never_fails():
    arms = _arms(Tables(_table(100)), _backend(1), users=range(200))
    assert set(arms.values()) == {(1, "live")}


def test_a_live_version_not_loaded_here_falls_back_to_the_newest_ready():
    table = RoutingTable(model="vm", live=5)
    handle, arm = routed(_backend(1, 2), HistoryProvider(), Tables(table), _parsed())
    assert (handle.version, arm) == (2, "live")


def test_the_stage_records_the_arm_on_the_context():
    stage = RouteStage(_backend(1, 2), HistoryProvider(), Tables(_table(100)))
    ctx = RequestContext.begin()
    route = asyncio.run(stage(_parsed(), ctx))
    assert (route.handle.version, ctx.version, ctx.arm) == (2, 2, "canary")
