"""The RolloutAdmin gRPC service (protos/adrank/v1/rollout.proto): the operator's side of a rollout.

It is served on the ranking port beside AdRanking. The token interceptor (serving.security.auth) gives
every method of this service the `admin` scope, so a caller without a valid token is UNAUTHENTICATED
and one whose token lacks the scope PERMISSION_DENIED. A server started without a token file answers
every call UNAUTHENTICATED too: a rollout API without authentication is never open. Errors leave
through `serving.errors.grpc_status`, so a refused preflight is FAILED_PRECONDITION naming each check.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

import grpc

from protos.adrank.v1 import rollout_pb2, rollout_pb2_grpc
from serving.errors import RankingError, grpc_status
from serving.rollout.errors import RolloutError
from serving.rollout.runtime import RolloutRuntime
from serving.rollout.spec import parse_spec

log = logging.getLogger(__name__)
SERVICE_NAME = rollout_pb2.DESCRIPTOR.services_by_name["RolloutAdmin"].full_name
MAX_SPEC_CHARS = 64 * 1024


def _check(c) -> rollout_pb2.CheckInfo:
    return rollout_pb2.CheckInfo(name=c.name, status=c.status, value=c.value or 0.0, has_value=c.value is not None,
                                 bound=c.bound, message=c.message)


def status_message(runtime: RolloutRuntime, model: str, message: str = "") -> rollout_pb2.RolloutStatus:
    """The RolloutStatus of `model` as this replica sees it (registry, loaded versions, analysis)."""
    d = runtime.describe(model)
    table, rollout = d["table"], d["rollout"]
    out = rollout_pb2.RolloutStatus(model=model, message=message, phase=rollout.phase if rollout else "idle")
    if table is not None:
        out.live_version = table.live
        if table.canary is not None:
            out.canary_version, out.canary_weight = table.canary.version, table.canary.weight
        if table.shadow is not None:
            out.shadow_version, out.shadow_sample_rate = table.shadow.version, table.shadow.sample_rate
    for r in d["versions"]:
        out.versions.add(version=r.version, state=r.state.value, fm_version=r.facts.fm_version,
                         loaded=r.version in d["loaded"])
    if rollout is not None:
        spec = rollout.spec
        out.failed_windows, out.threshold = rollout.state.failed_windows, spec.threshold
        out.interval_s = spec.interval_s
        out.steps.extend(spec.steps)
        for w in rollout.windows:
            info = out.windows.add(at_ms=w.at_ms, weight=w.weight, action=w.action, live_requests=w.live.requests,
                                   canary_requests=w.canary.requests, live_p99_ms=w.live.p99_ms or 0.0,
                                   canary_p99_ms=w.canary.p99_ms or 0.0,
                                   canary_error_rate=w.canary.errors / w.canary.requests if w.canary.requests else 0.0,
                                   psi=w.check_value("psi") or 0.0, p_ctr_ratio=w.check_value("p_ctr_ratio") or 0.0)
            info.checks.extend(_check(c) for c in w.checks)
    shadow = getattr(runtime, "shadow_stats", None)
    if shadow is not None:
        s = shadow(model)
        if s is not None:
            out.shadow.CopyFrom(rollout_pb2.ShadowInfo(**s))
    return out


class RolloutAdminService(rollout_pb2_grpc.RolloutAdminServicer):
    """Usage: `RolloutAdminService(runtime, auth_configured=bool(config.auth_tokens)).add_to_server(server)`."""

    def __init__(self, runtime: RolloutRuntime, *, auth_configured: bool) -> None:
        self.runtime, self.auth_configured = runtime, auth_configured

    def add_to_server(self, server: grpc.aio.Server) -> None:
        rollout_pb2_grpc.add_RolloutAdminServicer_to_server(self, server)

    async def _call(self, context: grpc.aio.ServicerContext, what: str, work: Callable[[], Awaitable]):
        if not self.auth_configured:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "the rollout API is closed: start the server with "
                                "--auth-tokens and call it with a token that has the 'admin' scope")
        try:
            return await work()
        except Exception as exc:  # the one mapping to a status, as for Score
            code, message = grpc_status(exc)
            if not isinstance(exc, RankingError):
                log.exception("RolloutAdmin.%s failed", what)
            else:
                log.info("RolloutAdmin.%s refused: %s", what, message)
            await context.abort(code, message)

    @staticmethod
    def _actor(actor: str) -> str:
        return actor.strip()[:128] or "admin"

    async def Start(self, request, context):  # noqa: N802 - gRPC method names
        async def work():
            if len(request.spec_toml) > MAX_SPEC_CHARS:
                raise RolloutError(f"spec_toml: {len(request.spec_toml)} characters exceed {MAX_SPEC_CHARS}")
            spec = parse_spec(request.spec_toml)
            await self.runtime.start_rollout(spec, actor=self._actor(request.actor), reason=request.reason)
            done = f"{spec.model}/{spec.version}: canary at {spec.steps[0]:g}%"
            return await asyncio.to_thread(status_message, self.runtime, spec.model, done)
        return await self._call(context, "Start", work)

    async def Stage(self, request, context):  # noqa: N802
        async def work():
            model, version = request.model, int(request.version)
            await asyncio.to_thread(self.runtime.register, model, version, actor=self._actor(request.actor),
                                    reason=request.reason or "staged: loaded ahead of any traffic")
            await self.runtime.poll_once()  # loads and warms it here; every other replica at its next poll
            error = self.runtime.load_errors.get((model, version))
            done = f"{model}/{version}: staged" + (f", but not loaded here: {error}" if error else
                                                   ", loaded and warmed here")
            return await asyncio.to_thread(status_message, self.runtime, model, done)
        return await self._call(context, "Stage", work)

    async def Shadow(self, request, context):  # noqa: N802
        async def work():
            if not 0 <= request.sample_rate <= 1:
                raise RolloutError(f"sample_rate: must be within 0..1, got {request.sample_rate!r}")
            # staged first and loaded (warmed) here before the shadow route exists, as `start` does for a
            # canary: no mirror ever reaches a version this replica is still loading
            await asyncio.to_thread(self.runtime.register, request.model, int(request.version),
                                    actor=self._actor(request.actor))
            await self.runtime.poll_once()
            await asyncio.to_thread(self.runtime.shadow, request.model, int(request.version), request.sample_rate,
                                    actor=self._actor(request.actor), reason=request.reason)
            await self.runtime.poll_once()
            done = f"{request.model}/{request.version}: shadow at {request.sample_rate:g}"
            return await asyncio.to_thread(status_message, self.runtime, request.model, done)
        return await self._call(context, "Shadow", work)

    def _simple(name: str, method: str | None, done: str):  # noqa: N805 - a factory of methods
        async def rpc(self, request, context):
            async def work():
                if method is not None:
                    await asyncio.to_thread(getattr(self.runtime, method), request.model,
                                            actor=self._actor(request.actor), reason=request.reason)
                    await self.runtime.poll_once()
                # registry reads block on its lock while a writer commits: never on the event loop
                return await asyncio.to_thread(status_message, self.runtime, request.model, done)
            return await self._call(context, name, work)
        rpc.__name__ = name
        return rpc

    Status = _simple("Status", None, "")
    Promote = _simple("Promote", "promote", "promoted")
    Pause = _simple("Pause", "pause", "paused: analysis holds, the weight stays")
    Resume = _simple("Resume", "resume", "resumed")
    Rollback = _simple("Rollback", "rollback", "rolled back")
    Abort = _simple("Abort", "abort", "aborted")

    async def History(self, request, context):  # noqa: N802
        async def work():
            entries = await asyncio.to_thread(self.runtime.history, request.model)
            out = rollout_pb2.HistoryResponse()
            for e in entries:
                out.entries.add(seq=e.seq, version=e.version, from_state=e.from_state.value if e.from_state else "",
                                to_state=e.to_state.value, actor=e.actor, at_ms=e.at_ms, reason=e.reason,
                                metrics_json=json.dumps(dict(e.metrics), sort_keys=True, default=float),
                                weight=e.weight or 0.0, has_weight=e.weight is not None)
            return out
        return await self._call(context, "History", work)


__all__ = ["SERVICE_NAME", "RolloutAdminService", "status_message"]
