"""Stage 4, history: Route → WithHistory. The user's FM history for models that read it.

The engine is `serving.history.HistoryProvider` (one cache lookup per request, tensors built by the
function training uses); this stage decides whether the model needs it, and records on the context
what the response and a request log need: the degraded flag, the lookup time and the snapshot id.
A model without FM history passes through untouched.
"""

from __future__ import annotations

from serving.history import HistoryProvider, needs_history
from serving.pipeline.context import RequestContext
from serving.pipeline.values import Route, WithHistory


class HistoryStage:
    """Route → WithHistory (history None when the model reads no FM history)."""

    name = "history"

    def __init__(self, provider: HistoryProvider) -> None:
        self.provider = provider

    async def __call__(self, route: Route, ctx: RequestContext) -> WithHistory:
        request, handle = route.request, route.handle
        if not needs_history(handle):
            return WithHistory(request, handle, None)
        hist = await self.provider.inputs(handle, request.user_id, request.request_time_ms, len(request.ad_id),
                                          timeout_s=ctx.remaining_s())
        ctx.flags.extend(hist.flags)
        ctx.cache_us, ctx.snapshot_id = hist.cache_us, hist.snapshot_id
        return WithHistory(request, handle, hist)
