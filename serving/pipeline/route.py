"""Stage 3, route: ParsedRequest → Route. Chooses the model version (and rollout arm) that serves.

A pinned version must be ready (its FM history readable); an unpinned request goes to the newest
version that is, so a version whose embeddings are missing never takes traffic. Every request is on
the "live" arm today; a rollout router (canary weights, shadow samples) replaces this stage and sets
`ctx.arm` to the arm it chose. Route also checks the one request limit that depends on the model:
its dense width.
"""

from __future__ import annotations

from serving.backends.base import InferenceBackend, ModelHandle
from serving.errors import BackendUnavailable, InvalidRequest, ModelNotReady, RankingError
from serving.history import HistoryProvider
from serving.pipeline.context import ARM_LIVE, RequestContext
from serving.pipeline.values import ParsedRequest, Route


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


class RouteStage:
    """ParsedRequest → Route; records the chosen model, version, arm and fm_version on the context."""

    name = "route"

    def __init__(self, backend: InferenceBackend, history: HistoryProvider) -> None:
        self.backend, self.history = backend, history

    async def __call__(self, request: ParsedRequest, ctx: RequestContext) -> Route:
        handle = resolve(self.backend, self.history, request.model_name, request.model_version)
        width = request.dense.shape[1]
        if width > handle.feature_spec.max_extra_dense:
            raise InvalidRequest(f"candidates.dense_features: {width} values exceed model "
                                 f"{handle.name}/{handle.version}'s width of {handle.feature_spec.max_extra_dense}")
        ctx.model, ctx.version, ctx.arm, ctx.fm_version = handle.name, handle.version, ARM_LIVE, handle.fm_version
        return Route(request, handle)
