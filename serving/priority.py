"""Lower OS priority for the server's background threads (model loads, aside inferences, the request log).

Why per thread: Linux schedules each thread apart by its native id, so a loader or log writer made nicer
takes whatever CPU the event loop's thread and the host's other work leave, instead of competing with
them for it. A thread only ever lowers its own priority; raising it back would need privileges.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)


def lower_thread_priority(by: int) -> int | None:
    """Makes the calling thread `by` nicer than it is (capped at 19). Returns the new niceness, or None where
    the platform has no per-thread priority or refuses it (the thread then runs as is, which is logged)."""
    try:
        tid = threading.get_native_id()
        nice = min(19, os.getpriority(os.PRIO_PROCESS, tid) + by)
        os.setpriority(os.PRIO_PROCESS, tid, nice)
        return nice
    except (AttributeError, OSError) as exc:  # no setpriority (Windows), or refused: run at normal priority
        log.info("thread %s keeps its priority: %s", threading.current_thread().name, exc)
        return None
