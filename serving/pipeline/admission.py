"""Admission control: a bounded number of Score calls in flight and a bounded wait for a slot.

An `Admission` is asked before the first stage runs and told when the last one finished (or failed).
`ConcurrencyLimit`, the policy `adrank serve` installs, lets `max_in_flight` requests run; up to
`max_queued` more wait for a slot, each for at most `max_queue_wait_ms` (never past its own
deadline); anything beyond is refused at once with `serving.errors.Overloaded`, which the servicer
answers RESOURCE_EXHAUSTED with a retry hint. Refusing early is what keeps an overloaded server
useful: the calls it accepts stay fast, and the ones it refuses learn so in microseconds instead of
timing out in a queue. Health and reflection never pass through the pipeline, so they keep answering
while scoring is saturated (unlike grpc's `maximum_concurrent_rpcs`, which counts them too).

Usage::

    admission = ConcurrencyLimit(max_in_flight=64, max_queued=64, max_queue_wait_s=0.02, retry_after_ms=100)
    pipeline = Pipeline.build(config, backend, history, admission=admission)
"""

from __future__ import annotations

import asyncio
import collections
from typing import Protocol

from serving.errors import Overloaded
from serving.pipeline.context import RequestContext


class Admission(Protocol):
    """What the pipeline asks of an admission policy."""

    async def admit(self, ctx: RequestContext) -> None:
        """Returns once the request may run; raises Overloaded when it may not (read `ctx.deadline`
        to bound how long it may wait)."""

    def release(self, ctx: RequestContext) -> None:
        """The request admitted with `ctx` has finished, successfully or not."""


class ConcurrencyLimit:
    """At most `max_in_flight` admitted requests; a FIFO of at most `max_queued` waiters.

    Runs on one event loop (the server's), so plain counters need no lock. A slot freed by `release`
    is handed straight to the oldest waiter, so a newcomer never overtakes the queue.
    """

    def __init__(self, max_in_flight: int, max_queued: int = 0, max_queue_wait_s: float = 0.0,
                 retry_after_ms: int = 100) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        self.max_in_flight, self.max_queued = max_in_flight, max_queued
        self.max_queue_wait_s, self.retry_after_ms = max_queue_wait_s, retry_after_ms
        self.in_flight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def queued(self) -> int:
        return len(self._waiters)

    def _refuse(self, why: str) -> Overloaded:
        return Overloaded(f"server overloaded: {why}; retry after {self.retry_after_ms} ms",
                          retry_after_ms=self.retry_after_ms)

    async def admit(self, ctx: RequestContext) -> None:
        if self.in_flight < self.max_in_flight and not self._waiters:
            self.in_flight += 1
            return
        if len(self._waiters) >= self.max_queued:
            raise self._refuse(f"{self.in_flight} calls in flight and {len(self._waiters)} queued "
                               f"(max_in_flight={self.max_in_flight}, max_queued={self.max_queued})")
        wait_s = self.max_queue_wait_s
        remaining = ctx.remaining_s()
        if remaining is not None:
            wait_s = min(wait_s, max(remaining, 0.0))
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), wait_s)
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():  # the slot arrived as the wait ran out: keep it
                return
            waiter.cancel()
            raise self._refuse(f"no slot within {wait_s * 1e3:.0f} ms (max_queue_wait_ms)") from None
        except asyncio.CancelledError:  # the call went away while queued; pass on a slot it was handed
            if waiter.done() and not waiter.cancelled():
                self.release(ctx)
            else:
                waiter.cancel()
            raise
        finally:
            try:
                self._waiters.remove(waiter)
            except ValueError:
                pass

    def release(self, ctx: RequestContext) -> None:
        # hand the slot to the oldest live waiter (in_flight stays the same), or free it
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.in_flight -= 1
