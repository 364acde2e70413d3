"""Idle polling for the serving event loop: keep the core busy for a short while after each wake-up.

A server that answers one request and then blocks in `epoll_wait` lets its core go idle; on a virtual
machine the vCPU halts, and the next request meets cold caches and a core that has to be woken.
`python -m loadtests.bench_idle` measures it in process (the pipeline on a 200-candidate request, no
gRPC): after 0.5 ms asleep between calls, as between sequential requests, a call takes 1.28–1.37× its
back-to-back time; after the same 0.5 ms spent spinning, 1.02–1.04× (docs/benchmarks.md, "Idle polling").

`BusyPollSelector` is the platform's selector (epoll on Linux) that, asked to wait, first polls without
waiting for up to `spin_s`, and only then blocks for the rest of the timeout. This is Seastar's
`--idle-poll-time-us` and the idea behind Linux's `SO_BUSY_POLL`: it trades CPU for latency at low
load — a worker spins for up to `spin_s` after every wake-up (a request, a timer), so an idle server
costs that much per wake-up and a server that never idles (at capacity) costs nothing extra. Off by
default (`busy_poll_us = 0`); turn it on where each worker has a core to itself.

Each poll is a real `epoll_wait(0)` system call (kqueue's on macOS), which releases the interpreter lock,
so gRPC's poller thread and the server's background threads still get it between polls.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

T = TypeVar("T")


class BusyPollSelector(selectors.DefaultSelector):  # epoll on Linux, kqueue on macOS
    """`select(timeout)`: poll without waiting for up to `spin_s` (never beyond `timeout`), then block.

    Counts what the spinning costs and what it finds (`spins`, `hits`, `spin_s_total`), for /metrics."""

    def __init__(self, spin_s: float) -> None:
        super().__init__()
        if not 0 <= spin_s <= 0.1:
            raise ValueError(f"spin_s must be within [0, 0.1] s, got {spin_s}")
        self.spin_s = spin_s
        self.spins = self.hits = 0
        self.spin_s_total = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if self.spin_s <= 0 or (timeout is not None and timeout <= 0):
            return super().select(timeout)
        start = time.perf_counter()
        limit = self.spin_s if timeout is None else min(self.spin_s, timeout)
        self.spins += 1
        while True:
            ready = super().select(0)
            spent = time.perf_counter() - start
            if ready:
                self.hits += 1
                self.spin_s_total += spent
                return ready
            if spent >= limit:
                break
        self.spin_s_total += spent
        return super().select(None if timeout is None else max(0.0, timeout - spent))


class BusyPollEventLoop(asyncio.SelectorEventLoop):
    """asyncio's selector loop on a `BusyPollSelector`, which it keeps as `busy_selector` for metrics."""

    def __init__(self, spin_s: float) -> None:
        self.busy_selector = BusyPollSelector(spin_s)
        super().__init__(self.busy_selector)


class BusyPollCollector(Collector):
    """`adrank_busy_poll_*`: how often the loop spun, how often a spin found work, and the CPU time spent
    spinning — what idle polling costs, and whether it pays off, per worker (added up under --workers)."""

    def __init__(self, selector: BusyPollSelector, registry: CollectorRegistry | None = None) -> None:
        self.selector = selector
        if registry is not None:
            registry.register(self)

    def collect(self) -> Iterator[Metric]:
        sel = self.selector
        yield CounterMetricFamily("adrank_busy_poll_spins", "Waits of the event loop that began by polling "
                                  "without waiting (--busy-poll-us)", value=sel.spins)
        yield CounterMetricFamily("adrank_busy_poll_hits", "Of those, the ones whose polling found an event "
                                  "before the spin time ran out", value=sel.hits)
        yield CounterMetricFamily("adrank_busy_poll_spin_seconds", "Time the event loop spent polling without "
                                  "waiting", value=sel.spin_s_total)


def register_metrics(registry: CollectorRegistry) -> BusyPollCollector | None:
    """The running loop's busy-poll counters on `registry`, when the loop is a `BusyPollEventLoop`."""
    selector = getattr(asyncio.get_running_loop(), "busy_selector", None)
    return BusyPollCollector(selector, registry) if selector is not None else None


def run(main: Coroutine[Any, Any, T], busy_poll_us: int) -> T:
    """`asyncio.run(main)`, on a `BusyPollEventLoop` when `busy_poll_us` > 0 (off: exactly asyncio.run)."""
    if busy_poll_us <= 0:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=lambda: BusyPollEventLoop(busy_poll_us / 1e6)) as runner:
        return runner.run(main)
