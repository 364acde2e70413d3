"""Logging that a flood of bad input cannot turn into a flood of log lines.

A client sending garbage (undecodable bytes, wrong tokens) would otherwise cost a log line, or a
traceback, per request: disk, CPU and the lines that matter drowned. `ThrottledLog` writes the first
event of each kind at once, then at most one line per kind per interval, saying how many were left out.

Usage::

    bad_input = ThrottledLog(logging.getLogger(__name__), interval_s=10)
    bad_input.warning("undecodable", "undecodable %s request (%d bytes)", "Score", 37)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable


class ThrottledLog:
    """At most one line per `interval_s` for each `kind`; the next line written reports the suppressed count."""

    def __init__(self, logger: logging.Logger, interval_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.interval_s, self.clock = logger, interval_s, clock
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def warning(self, kind: str, message: str, *args: object) -> bool:
        """Logs `message % args` unless `kind` logged within the interval; True when it was written."""
        now = self.clock()
        with self._lock:
            if now < self._next.get(kind, float("-inf")):
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return False
            self._next[kind] = now + self.interval_s
            suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            message += f" (and {suppressed} more like it in the last {self.interval_s:g} s, not logged)"
        self.logger.warning(message, *args)
        return True

    def suppressed(self, kind: str) -> int:
        """Events of `kind` left out since its last line."""
        with self._lock:
            return self._suppressed.get(kind, 0)
