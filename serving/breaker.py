"""A circuit breaker for a dependency the server can do without for a while (the embedding cache).

Closed: calls go through; `failures` consecutive failures open it. Open: calls are skipped (the
caller takes its fallback at once, spending none of the request's budget on a dependency that is
down or stalled) for `cooldown_s`. Then half-open: one probe call goes through while the others keep
falling back; its success closes the breaker, its failure opens it for another cool-down. So an
outage costs at most `failures` slow calls per cool-down, and recovery needs no restart.

Usage::

    breaker = CircuitBreaker(failures=5, cooldown_s=1.0)
    if breaker.allow():
        try:
            value = await lookup()
        except Unavailable:
            breaker.failure()
            value = fallback()
        else:
            breaker.success()
    else:
        value = fallback()
"""

from __future__ import annotations

import time
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    """Single event loop, no lock: `allow`, `success` and `failure` run between awaits."""

    def __init__(self, failures: int = 5, cooldown_s: float = 1.0, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold, self.cooldown_s, self._clock = failures, cooldown_s, clock
        self.state = CLOSED
        self.consecutive_failures = 0
        self.opened_at = 0.0
        self.opened_count = 0
        """How many times the breaker opened (for tests and logs)."""

    @property
    def is_closed(self) -> bool:
        return self.state == CLOSED

    def allow(self) -> bool:
        """Whether this call may go to the dependency (True for the one probe when half-open)."""
        if self.state == CLOSED:
            return True
        now = self._clock()
        # a probe that never reported (its call was cancelled) is replaced after another cool-down
        if now - self.opened_at >= self.cooldown_s:
            self.state, self.opened_at = HALF_OPEN, now  # this caller probes; the others fall back
            return True
        return False

    def success(self) -> None:
        self.state, self.consecutive_failures = CLOSED, 0

    def failure(self) -> None:
        self.consecutive_failures += 1
        if self.state == HALF_OPEN or self.consecutive_failures >= self.threshold:
            if self.state != OPEN:
                self.opened_count += 1
            self.state, self.opened_at = OPEN, self._clock()
