"""Stage 3, route: ParsedRequest → Route. Chooses the model version (and rollout arm) that serves.

A pinned version must be ready (its FM history readable) and is served on the "pinned" arm. With a
rollout router (serving.rollout: the registry's routing table per model name), an unpinned request
goes to the table's live version, or to its canary when the user's sticky bucket falls in the canary's
weight; without a table, to the newest ready version (arm "live"), so a version whose embeddings are
missing never takes traffic. A routed version that this replica has not loaded (or cannot serve) yet —
a hot load still warming, a replica behind the registry — never fails the request: a canary falls back
to live, a live version to the newest ready one. Route also checks the one request limit that depends
on the model: its dense width.
"""

from __future__ import annotations

from typing import Protocol

from serving.backends.base import InferenceBackend, ModelHandle
from serving.errors import BackendUnavailable, InvalidRequest, ModelNotFound, ModelNotReady, RankingError
from serving.history import HistoryProvider
from serving.pipeline.context import ARM_CANARY, ARM_LIVE, ARM_PINNED, RequestContext
from serving.pipeline.values import ParsedRequest, Route
from serving.rollout.routing import RoutingTable, choose


class Router(Protocol):
    """Where route reads a model's routing table: `serving.rollout.watcher.RoutingWatcher` (a dict read)."""

    def table(self, model: str) -> RoutingTable | None: ...


def resolve(backend: InferenceBackend, history: HistoryProvider, name: str, version: int | None) -> ModelHandle:
    """The handle that serves `name` at `version` (None: the newest ready one). Raises ModelNotFound
    naming what exists, or ModelNotReady naming why each candidate version cannot serve."""
    if version is not None:
        handle = backend.resolve(name, version)
        history.check(handle)
        return handle
    reasons = []
    unavailable: BackendUnavailable | None = None
    for v in reversed(backend.models().get(name, [])):
        handle = backend.resolve(name, v)
        try:
            history.check(handle)
            return handle
        except ModelNotReady as exc:
            reasons.append(f"v{v}: {exc}")
        except BackendUnavailable as exc:  # its codes cannot be checked now: an older version may still serve
            unavailable = unavailable or exc
            reasons.append(f"v{v}: {exc}")
    if unavailable is not None:
        raise unavailable
    if reasons:
        raise ModelNotReady(f"model.name: no version of {name!r} is ready; " + "; ".join(reasons))
    return backend.resolve(name, None)  # raises ModelNotFound naming what exists


def readiness(backend: InferenceBackend, history: HistoryProvider) -> dict[str, str]:
    """Per loaded version ("name/version"): "ready" or why not (logged at start-up; the server's
    periodic readiness check runs it off the event loop, and only it retries readers that failed to open)."""
    out = {}
    for name, versions in backend.models().items():
        for v in versions:
            try:
                history.check(backend.resolve(name, v), retry=True)
                out[f"{name}/{v}"] = "ready"
            except RankingError as exc:
                out[f"{name}/{v}"] = str(exc)
    return out


def _servable(backend: InferenceBackend, history: HistoryProvider, name: str, version: int) -> ModelHandle | None:
    """The handle of a routed version when this replica can serve it now, else None (the caller falls back)."""
    try:
        handle = backend.resolve(name, version)
        history.check(handle)
        return handle
    except (ModelNotFound, ModelNotReady, BackendUnavailable):
        return None


def routed(backend: InferenceBackend, history: HistoryProvider, router: Router | None,
           request: ParsedRequest) -> tuple[ModelHandle, str]:
    """The handle and arm of one request (module docstring): pin, then routing table, then newest ready."""
    name, pinned = request.model_name, request.model_version
    if pinned is not None:
        return resolve(backend, history, name, pinned), ARM_PINNED
    table = router.table(name) if router is not None else None
    if table is not None:
        version, arm = choose(table, request.user_id)
        handle = _servable(backend, history, name, version)
        if handle is None and arm == ARM_CANARY:
            handle, arm = _servable(backend, history, name, table.live), ARM_LIVE
        if handle is not None:
            return handle, arm
    return resolve(backend, history, name, None), ARM_LIVE


class RouteStage:
    """ParsedRequest → Route; records the chosen model, version, arm and fm_version on the context."""

    name = "route"

    def __init__(self, backend: InferenceBackend, history: HistoryProvider, router: Router | None = None) -> None:
        self.backend, self.history, self.router = backend, history, router

    async def __call__(self, request: ParsedRequest, ctx: RequestContext) -> Route:
        handle, arm = routed(self.backend, self.history, self.router, request)
        width = request.dense.shape[1]
        if width > handle.feature_spec.max_extra_dense:
            raise InvalidRequest(f"candidates.dense_features: {width} values exceed model "
                                 f"{handle.name}/{handle.version}'s width of {handle.feature_spec.max_extra_dense}")
        ctx.model, ctx.version, ctx.arm, ctx.fm_version = handle.name, handle.version, arm, handle.fm_version
        return Route(request, handle)
