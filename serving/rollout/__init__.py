"""Rolling out model versions: a registry of states, sticky routing, preflight checks and canary analysis.

These modules never import the request path; the request path calls them:

    watcher = RoutingWatcher(SqliteRegistry("runs/state"))      # or RedisRegistry(url) for several hosts
    watcher.refresh(); asyncio.create_task(watcher.poll(1.0))    # at start-up
    table = watcher.table(model_name)                            # per request (None: no rollout state yet)
    version, arm = choose(table, user_id, pinned_version)        # arm: "live" | "canary" | "pinned"
    shadow = shadow_version(table, arm, request_id)              # score off the response path when not None

and an operator's tool calls `require_preflight(...)`, `RolloutController(registry, load_spec(path))`.
Inside `adrank serve --rollout-registry`, `runtime.RolloutRuntime` does the polling, hot loading and
analysis, `admin.RolloutAdminService` is the operator's gRPC API and `cli` its `adrank rollout` verbs
(neither imported here: the request path imports this package and needs neither). See docs/rollouts.md.
"""

from serving.rollout.analysis import AnalysisState, ArmWindow, Decision, WindowMetrics, advance, psi, score_psi
from serving.rollout.controller import RolloutController, RolloutVetoed
from serving.rollout.errors import (
    AlreadyRegistered,
    IllegalTransition,
    PreflightRefused,
    RegistryPathError,
    RegistryUnavailable,
    RolloutError,
    RoutingError,
    SpecError,
    StateConflict,
    UnknownVersion,
)
from serving.rollout.preflight import PreflightLimits, PreflightReport, preflight, require_preflight
from serving.rollout.redis_registry import RedisRegistry
from serving.rollout.registry import AuditEntry, RolloutRegistry, VersionFacts, VersionRecord
from serving.rollout.routing import CanaryRoute, Route, RoutingTable, ShadowRoute, choose, shadow_version
from serving.rollout.spec import Checks, RolloutSpec, Webhook, load_spec, parse_spec
from serving.rollout.sqlite_registry import SqliteRegistry
from serving.rollout.states import TRANSITIONS, VersionState
from serving.rollout.watcher import RoutingWatcher

__all__ = [
    "TRANSITIONS", "AlreadyRegistered", "AnalysisState", "ArmWindow", "AuditEntry", "CanaryRoute", "Checks",
    "Decision", "IllegalTransition", "PreflightLimits", "PreflightRefused", "PreflightReport", "RedisRegistry",
    "RegistryPathError", "RegistryUnavailable", "RolloutController", "RolloutError", "RolloutRegistry",
    "RolloutSpec", "RolloutVetoed", "Route", "RoutingError", "RoutingTable", "RoutingWatcher", "ShadowRoute",
    "SpecError", "SqliteRegistry", "StateConflict", "UnknownVersion", "VersionFacts", "VersionRecord",
    "VersionState", "Webhook", "WindowMetrics", "advance", "choose", "load_spec", "parse_spec", "preflight", "psi",
    "require_preflight", "score_psi", "shadow_version",
]
