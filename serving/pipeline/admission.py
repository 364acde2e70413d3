"""The seam where admission control plugs into the pipeline; no policy is installed today.

An `Admission` is asked before the first stage runs and told when the last one finished (or failed).
A policy that bounds the requests in flight and the time they may queue raises
`serving.errors.Overloaded` from `admit`, which the servicer answers RESOURCE_EXHAUSTED like every
other typed error. Health and reflection never pass through the pipeline, so they keep answering
while scoring is saturated.

Usage::

    pipeline = Pipeline.build(config, backend, history, admission=my_policy)
"""

from __future__ import annotations

from typing import Protocol

from serving.pipeline.context import RequestContext


class Admission(Protocol):
    """What the pipeline asks of an admission policy."""

    async def admit(self, ctx: RequestContext) -> None:
        """Returns once the request may run; raises Overloaded when it may not (read `ctx.deadline`
        to bound how long it may wait)."""

    def release(self, ctx: RequestContext) -> None:
        """The request admitted with `ctx` has finished, successfully or not."""
