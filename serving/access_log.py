"""The access log: one record per Score outcome, as fields (request_id, model, version, code,
latency_ms, backend, flags), written through `logging` to the logger `adrank.access`.

Why sampled and rate-limited: at thousands of calls per second a line per OK call costs CPU and disk
for little (the Parquet request log, docs/request-log.md, keeps every scored request); a failure is
what an operator looks for, so every failure code is logged — but at most `failures_per_s` lines per
code per second, so a flood of bad input or an outage cannot flood the log. The next line written for
a code carries `suppressed`, how many of that code were left out since.

Nothing taken unbounded from the request is written: `model` is a loaded model's name or "unknown",
the request_id is cut to `MAX_ID_CHARS`, and the failure detail is the server's own error message
(never the request body or its metadata, so never a token).

Usage::

    access = AccessLog(ok_sample=0.01, failures_per_s=10)
    access.record(request_id="r1", model="vm", version=3, code="OK", latency_s=0.0021, backend="embedded")
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable

log = logging.getLogger("adrank.access")
MAX_ID_CHARS = 128
MAX_DETAIL_CHARS = 300


class AccessLog:
    """Decides which outcomes are written and writes them; thread-safe (the limiter is locked)."""

    def __init__(self, ok_sample: float = 0.01, failures_per_s: int = 10, *,
                 clock: Callable[[], float] = time.monotonic, rng: Callable[[], float] = random.random) -> None:
        self.ok_sample, self.failures_per_s = ok_sample, failures_per_s
        self._clock, self._rng = clock, rng
        self._window: dict[str, tuple[int, int]] = {}  # code -> (second, lines written in it)
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def _admit(self, code: str) -> tuple[bool, int]:
        """Whether a failure line for `code` may be written now, and how many were left out before it."""
        second = int(self._clock())
        with self._lock:
            start, count = self._window.get(code, (second, 0))
            if start != second:
                start, count = second, 0
            if count >= self.failures_per_s:
                self._suppressed[code] = self._suppressed.get(code, 0) + 1
                self._window[code] = (start, count)
                return False, 0
            self._window[code] = (start, count + 1)
            return True, self._suppressed.pop(code, 0)

    def record(self, *, request_id: str, model: str, version: int | None, code: str, latency_s: float,
               backend: str = "", flags: Iterable[int] = (), candidates: int | None = None,
               detail: str = "") -> bool:
        """Writes the outcome if sampling (OK) or the per-code limit (failures) lets it; True if written."""
        if code == "OK":
            if self.ok_sample <= 0 or (self.ok_sample < 1 and self._rng() >= self.ok_sample):
                return False
            suppressed = 0
        else:
            ok, suppressed = self._admit(code)
            if not ok:
                return False
        fields: dict[str, object] = {"event": "score", "request_id": request_id[:MAX_ID_CHARS], "model": model,
                                     "version": version, "code": code, "latency_ms": round(latency_s * 1e3, 3)}
        if backend:
            fields["backend"] = backend
        flags = list(flags)
        if flags:
            fields["flags"] = flags
        if candidates is not None:
            fields["candidates"] = candidates
        if detail:
            fields["detail"] = detail[:MAX_DETAIL_CHARS]
        if suppressed:
            fields["suppressed"] = suppressed
        level = logging.INFO if code == "OK" else logging.WARNING
        log.log(level, "score %s %s/%s %.1f ms", code, model, version if version is not None else "?",
                latency_s * 1e3, extra=fields)
        return True
