"""The per-request context: what every stage may read or record about the request it is serving.

Stage values (serving.pipeline.values) carry the data a stage transforms; the context carries what
is *about* the request: when it started and must end, its id, which model version and rollout arm
serve it, the flags its response will carry, and the time each stage took. It is the record a
request logger writes next to the scores, and the place a deadline check reads its budget from.

Usage::

    ctx = RequestContext.begin(grpc_context.time_remaining())   # None: no deadline
    response = await pipeline.run(payload, ctx)
    ctx.timings["infer"]                                          # seconds in the infer stage
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

ARM_LIVE = "live"
"""The arm of a request routed to the live version (or, without a rollout table, the newest ready one)."""
ARM_CANARY = "canary"
"""The arm of a request whose user's sticky bucket falls in the canary's weight."""
ARM_PINNED = "pinned"
"""The arm of a request that pinned its model version (pins bypass the routing table)."""
ARMS: tuple[str, ...] = (ARM_LIVE, ARM_CANARY, ARM_PINNED)
"""Every arm a response can carry: a closed set, so metric labels by arm stay bounded."""


@dataclass(slots=True)
class RequestContext:
    """Mutable on purpose: stages fill it in as the request advances (one object per request, never
    shared between requests, so no locking)."""

    started: float
    """time.perf_counter() when the request arrived; timing.total_us counts from here."""
    deadline: float | None = None
    """time.perf_counter() instant by which the caller wants an answer; None when it set no deadline."""
    wire: str = "rows"
    """The wire format the caller spoke: "rows" (Score) or "columns" (ScoreColumns); set by decode,
    read by encode, which answers in the same format."""
    request_id: str = ""
    """The caller's id once decoded; validate generates one when the caller sent none."""
    model: str = ""
    """Model name as requested (decode), then as resolved (route)."""
    version: int | None = None
    """Model version chosen by route; None until then."""
    arm: str = ""
    """Rollout arm route assigned ("live", "canary" or "pinned"); recorded so the arms can be told apart."""
    fm_version: str = ""
    """FM version whose codes the chosen model reads ("" or "none" for models without FM history)."""
    snapshot_id: str = ""
    """Embedding snapshot the history stage read; "" when the model reads no history."""
    cache_us: int = 0
    """Microseconds inside the cache lookup (part of the history stage), for timing.cache_us."""
    flags: list[int] = field(default_factory=list)
    """ranking_pb2.Flag values the response will carry, in the order stages raised them."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per stage name, filled by the pipeline as each stage returns (failed stages absent)."""
    shadow: asyncio.Future | None = None
    """Set when a rollout's shadow version mirrors this request (serving.pipeline.shadow): resolves, off the
    response path, to the shadow's `(version, p_ctr, p_cvr, snapshot_id)` (scores in request order), or None if
    the mirror failed.
    The request logger waits on it to record the pair of score vectors."""

    @classmethod
    def begin(cls, time_remaining_s: float | None = None, *, max_s: float | None = None,
              now: float | None = None) -> RequestContext:
        """A context starting now; `time_remaining_s` is what the transport says is left of the
        caller's deadline (grpc's `context.time_remaining()`), None for no deadline. `max_s`, the
        server's cap, bounds it and is the deadline of a caller that set none: a server never works
        longer on one request than it is configured to."""
        started = time.perf_counter() if now is None else now
        budget = time_remaining_s
        if max_s is not None:
            budget = max_s if budget is None else min(budget, max_s)
        return cls(started=started, deadline=None if budget is None else started + budget)

    def remaining_s(self, now: float | None = None) -> float | None:
        """Seconds left before the deadline (negative once it passed); None without a deadline."""
        if self.deadline is None:
            return None
        return self.deadline - (time.perf_counter() if now is None else now)

    def stage_us(self, *names: str) -> int:
        """Whole microseconds spent in the named stages together (0 for stages that did not run)."""
        return int(sum(self.timings.get(n, 0.0) for n in names) * 1e6)
