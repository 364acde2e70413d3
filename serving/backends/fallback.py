"""A remote backend (Triton) with the embedded backend behind it, switched by a circuit breaker.

Why: Triton is a separate process; when it dies or stops answering, the ranking server still holds
the same model repository, so it can compute the same version's scores in process. The breaker
(`serving.breaker.CircuitBreaker`) decides who infers:

- closed: every call goes to the primary; a call that fails because the primary is unreachable, slow,
  or no longer serves the version (UNAVAILABLE, DEADLINE_EXCEEDED, NOT_FOUND, not ready) is counted a
  failure and that same request is answered by the fallback, so no request fails on the outage;
- open (after `failures` consecutive failures): calls go straight to the fallback, spending none of
  their budget on a dependency that is down;
- half-open (after `cooldown_s`): one call probes the primary; success closes the breaker.

Requests the primary refuses as malformed (INVALID_ARGUMENT) or fails inside the model (INTERNAL) are
not outages: they propagate unchanged. `InferenceResult.backend` names who computed each response, so
`served_by.backend` says "embedded" while the fallback serves. Versions are resolved against the
primary's table while it is known (the version Triton serves is the version the fallback computes)
and against the fallback's own when the primary never answered.

Usage::

    backend = FallbackBackend(TritonBackend(url, repo), EmbeddedBackend(repo), CircuitBreaker(3, 1.0))
    await backend.start()            # starts even while Triton is down: the fallback serves
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from serving.backends.base import InferenceBackend, InferenceResult, ModelHandle
from serving.breaker import CircuitBreaker
from serving.errors import (
    BackendTimeout,
    BackendUnavailable,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    RankingError,
)

log = logging.getLogger(__name__)

OUTAGE_ERRORS = (BackendUnavailable, BackendTimeout, ModelNotFound, ModelNotReady)
"""Primary failures the fallback answers for (and the breaker counts)."""


class FallbackBackend(InferenceBackend):
    """`primary` while it answers, `fallback` (same repository, in process) while it does not."""

    def __init__(self, primary: InferenceBackend, fallback: InferenceBackend, breaker: CircuitBreaker) -> None:
        self.primary, self.fallback, self.breaker = primary, fallback, breaker
        self.name = primary.name
        self.has_fallback = True
        """False when the fallback failed to load at start: every call then goes to the primary."""
        self.fallback_calls = 0
        """Requests answered by the fallback (for tests and metrics)."""

    @property
    def _handles(self) -> dict[tuple[str, int], ModelHandle]:  # type: ignore[override]
        primary = self.primary._handles
        if not self.has_fallback:
            return primary
        if not primary:
            return self.fallback._handles
        # the primary's versions the fallback can also compute: a request never resolves to a version
        # that only one side has, so switching sides never changes which version answers
        both = {k: v for k, v in primary.items() if k in self.fallback._handles}
        return both or primary

    @property
    def repository(self):  # -> Path: both sides read the same model repository
        return getattr(self.primary, "repository", None) or getattr(self.fallback, "repository", None)

    @property
    def load_errors(self) -> dict[tuple[str, int], str]:
        return {**getattr(self.fallback, "load_errors", {}), **getattr(self.primary, "load_errors", {})}

    async def start(self) -> None:
        """The primary may be down at start: the breaker then starts open and a probe finds the primary
        once it answers. A fallback that cannot load (no ONNX files beside the manifests) is logged and
        left out: the server then behaves as with `triton_fallback = fail`, and needs the primary."""
        try:
            await self.fallback.start()
        except RankingError as exc:
            log.error("%s fallback backend not available, Triton outages will fail requests "
                      "(as triton_fallback = fail): %s", self.fallback.name, exc)
            self.has_fallback = False
            await self.primary.start()
            self._primary_started = True
            return
        try:
            await self.primary.start()
        except RankingError as exc:
            log.warning("%s backend unavailable at start, serving with the %s backend: %s",
                        self.primary.name, self.fallback.name, exc)
            for _ in range(self.breaker.threshold):
                self.breaker.failure()
            self._primary_started = False
        else:
            self._primary_started = True

    async def load_version(self, name: str, version: int) -> ModelHandle:
        """Hot loading (rollouts) on both sides: in process first, then on the primary, so a version
        becomes resolvable only when both can compute it (`_handles` takes the intersection). A primary
        that is down leaves the version on the fallback alone, which serves it until the primary is
        back and a later load reaches it."""
        handle = None
        if self.has_fallback:
            handle = await self.fallback.load_version(name, version)
        try:
            return await self.primary.load_version(name, version)
        except OUTAGE_ERRORS as exc:
            if handle is None:
                raise
            log.warning("%s backend could not load %s/%s (%s): loaded on the %s backend only, routable there "
                        "while the primary is unknown, and on both after a later load", self.primary.name, name,
                        version, exc, self.fallback.name)
            return handle

    async def unload_version(self, name: str, version: int) -> None:
        """Unloads on the primary first (it decides what is routable; a refusal leaves both sides as they
        were), then in process."""
        await self.primary.unload_version(name, version)
        if self.has_fallback and (name, version) in self.fallback._handles:
            await self.fallback.unload_version(name, version)

    async def close(self) -> None:
        await self.primary.close()
        await self.fallback.close()

    async def ready(self) -> bool:
        """Ready while either side can infer: the fallback is in process, so this is its readiness
        (the primary's when there is no fallback)."""
        return await (self.fallback.ready() if self.has_fallback else self.primary.ready())

    async def primary_ready(self) -> bool:
        return await self.primary.ready()

    async def _start_primary(self) -> None:
        """A primary that was down at start gets its model table on the first successful probe."""
        if not getattr(self, "_primary_started", True):
            await self.primary.start()
            self._primary_started = True
            log.info("%s backend reachable: its model table is loaded", self.primary.name)

    async def infer(self, handle: ModelHandle, inputs: dict[str, np.ndarray]) -> InferenceResult:
        return await self._infer(handle, inputs, aside=False)

    async def infer_aside(self, handle: ModelHandle, inputs: dict[str, np.ndarray]) -> InferenceResult:
        return await self._infer(handle, inputs, aside=True)

    async def _infer(self, handle: ModelHandle, inputs: dict[str, np.ndarray], *, aside: bool) -> InferenceResult:
        method = "infer_aside" if aside else "infer"  # the same path on whichever side answers
        if not self.has_fallback:
            return await getattr(self.primary, method)(handle, inputs)
        if self.breaker.allow():
            was_closed = self.breaker.is_closed
            try:
                await self._start_primary()
                result = await getattr(self.primary, method)(handle, inputs)
            except (*OUTAGE_ERRORS, ModelLoadError) as exc:
                self.breaker.failure()
                if was_closed and not self.breaker.is_closed:
                    log.warning("%s backend failing (%s): breaker open, serving with the %s backend",
                                self.primary.name, exc, self.fallback.name)
            else:
                if not was_closed:
                    log.info("%s backend answered the probe: breaker closed", self.primary.name)
                self.breaker.success()
                return dataclasses.replace(result, backend=result.backend or self.primary.name)
        result = await getattr(self.fallback, method)(handle, inputs)
        self.fallback_calls += 1
        return dataclasses.replace(result, backend=result.backend or self.fallback.name)
