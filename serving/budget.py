"""The current request's deadline, for calls made below the pipeline's stage signatures.

`Pipeline.run` records each request's deadline in a context variable (every grpc.aio call runs in a
task of its own, so each sees only its own); a backend reads `remaining_s()` to bound its own network
call (Triton's `client_timeout`) without every backend's `infer` signature carrying a context.

Usage::

    timeout = capped_timeout(self.timeout_s)     # min(timeout, time left of the call), >= a floor
"""

from __future__ import annotations

import time
from contextvars import ContextVar

DEADLINE: ContextVar[float | None] = ContextVar("adrank_request_deadline", default=None)
"""time.perf_counter() instant the current request must finish by; None outside a request or without one."""

MIN_TIMEOUT_S = 0.001
"""Smallest timeout handed to a client library: 0 or negative would mean "no timeout" to some of them."""


def remaining_s() -> float | None:
    """Seconds left of the current request's deadline (negative once passed); None without one."""
    deadline = DEADLINE.get()
    return None if deadline is None else deadline - time.perf_counter()


def capped_timeout(timeout_s: float) -> float:
    """`timeout_s`, or the time left of the current request when that is shorter (never below 1 ms)."""
    left = remaining_s()
    return timeout_s if left is None else max(min(timeout_s, left), MIN_TIMEOUT_S)
