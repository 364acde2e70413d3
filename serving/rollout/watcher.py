"""A replica's view of the routing tables, kept current by polling the registry's change counter.

Polling a counter (one row read, or one Redis GET) every second is what bounds how long replicas
disagree after a change, with no pub/sub channel to lose messages on reconnect: a change missed by one
poll is seen by the next, because the counter only grows.
"""

from __future__ import annotations

import asyncio
import logging
import threading

from serving.rollout.registry import RolloutRegistry
from serving.rollout.routing import RoutingTable

log = logging.getLogger(__name__)


class RoutingWatcher:
    """A replica's copy of the routing tables, rebuilt only when the registry's change counter moved.

    The request path calls `table(name)` (a dict read, no I/O); a background task refreshes every `poll_s`
    seconds, which is what bounds how long replicas disagree after a change.

        watcher = RoutingWatcher(registry)
        watcher.refresh()                                  # once before serving
        task = asyncio.create_task(watcher.poll(1.0))      # then in the background
        table = watcher.table("vm")
    """

    def __init__(self, registry: RolloutRegistry) -> None:
        self._registry = registry
        self._lock = threading.Lock()
        self._counter = -1
        self._tables: dict[str, RoutingTable] = {}

    @property
    def counter(self) -> int:
        """The change counter the current tables were built at (-1 before the first refresh)."""
        return self._counter

    def refresh(self) -> bool:
        """Rebuild the tables if the registry changed since the last refresh; True when it did."""
        with self._lock:
            counter = self._registry.change_counter()
            if counter == self._counter:
                return False
            tables = self._registry.routing_tables()
            # a change committed between the two reads is picked up at the next poll, never lost
            self._tables, self._counter = tables, counter
            return True

    def table(self, model: str) -> RoutingTable | None:
        return self._tables.get(model)

    async def poll(self, poll_s: float = 1.0, stop: asyncio.Event | None = None) -> None:
        """Refresh every `poll_s` seconds until `stop` is set (or the task is cancelled). The registry read
        runs in a worker thread so the event loop never waits on the database."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.refresh)
            except Exception as exc:  # a registry hiccup must not kill routing: keep the last tables, retry
                log.warning("routing refresh failed (%s); keeping the tables of change %d", exc, self._counter)
            try:
                await asyncio.wait_for(stop.wait(), timeout=poll_s)
            except TimeoutError:
                pass

    def tables(self) -> dict[str, RoutingTable]:
        return dict(self._tables)
