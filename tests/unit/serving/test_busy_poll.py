"""The idle-polling selector: it polls without waiting for up to its spin time, then blocks for the rest
of the timeout; events are returned as soon as a poll sees them; timeout 0 and spin 0 never spin; the
event loop built on it runs coroutines, timers and sockets like asyncio's own."""

from __future__ import annotations

import asyncio
import selectors
import socket
import threading

import pytest

from serving import busy_poll
from serving.busy_poll import BusyPollSelector
from serving.config import ConfigError, ServerConfig


class _Spy(selectors.DefaultSelector):
    """Records the timeout of every real epoll call under the busy-poll logic."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[float | None] = []

    def select(self, timeout=None):  # noqa: ANN001, ANN201 - the selectors signature
        self.timeouts.append(timeout)
        return super().select(timeout)


class Recording(BusyPollSelector, _Spy):
    pass


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_spins_with_zero_timeouts_then_blocks_for_the_rest(pair):
    sel = Recording(0.005)
    sel.register(pair[0], selectors.EVENT_READ)
    assert sel.select(0.05) == []
    *spins, last = sel.timeouts
    assert spins and set(spins) == {0}, sel.timeouts[:5]
    assert last is not None and 0 < last <= 0.05 - 0.005 + 1e-9, last


def test_an_event_during_the_spin_is_returned_without_blocking(pair):
    sel = Recording(5.0 / 100)  # 50 ms of spinning; the write comes after ~5 ms
    sel.register(pair[0], selectors.EVENT_READ)
    threading.Timer(0.005, pair[1].send, args=(b"x",)).start()
    ready = sel.select(None)
    assert [key.fileobj for key, _ in ready] == [pair[0]]
    assert set(sel.timeouts) == {0}, "blocked although the event came while polling"


def test_no_event_and_no_timeout_blocks_after_the_spin(pair):
    sel = Recording(0.001)
    sel.register(pair[0], selectors.EVENT_READ)
    threading.Timer(0.05, pair[1].send, args=(b"x",)).start()
    assert [key.fileobj for key, _ in sel.select(None)] == [pair[0]]
    assert sel.timeouts[-1] is None and set(sel.timeouts[:-1]) == {0}


@pytest.mark.parametrize("spin_s, timeout", [(0.01, 0), (0.0, 0.01), (0.0, None)])
def test_timeout_zero_or_spin_zero_is_one_plain_call(pair, spin_s, timeout):
    sel = Recording(spin_s)
    sel.register(pair[0], selectors.EVENT_READ)
    pair[1].send(b"x")  # something to return, so a None timeout does not block
    assert len(sel.select(timeout)) == 1
    assert sel.timeouts == [timeout]


@pytest.mark.parametrize("spin_s", [-0.001, 0.2])
def test_spin_out_of_range_is_refused(spin_s):
    with pytest.raises(ValueError, match="spin_s"):
        BusyPollSelector(spin_s)


def test_loop_runs_timers_and_sockets_on_the_busy_selector():
    async def main() -> tuple[bytes, type]:
        loop = asyncio.get_running_loop()

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readexactly(5))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello")
        got = await reader.readexactly(5)
        writer.close()
        server.close()
        await server.wait_closed()
        return got, type(loop._selector)  # noqa: SLF001 - which selector the loop runs on

    assert busy_poll.run(main(), 200) == (b"hello", BusyPollSelector)
    got, selector = busy_poll.run(main(), 0)
    assert got == b"hello" and selector is not BusyPollSelector


def test_config_bounds_name_the_field():
    assert ServerConfig().busy_poll_us == 0
    with pytest.raises(ConfigError, match="busy_poll_us"):
        ServerConfig(busy_poll_us=100_001)


def test_metrics_count_spins_hits_and_time_spent_spinning(pair):
    from prometheus_client import CollectorRegistry, generate_latest

    async def main() -> str:
        registry = CollectorRegistry()
        assert busy_poll.register_metrics(registry) is not None
        loop = asyncio.get_running_loop()
        got = asyncio.Event()
        loop.add_reader(pair[0].fileno(), lambda: (pair[0].recv(1), got.set()))
        loop.call_later(0.001, pair[1].send, b"x")  # arrives while the loop spins (100 ms)
        await got.wait()
        loop.remove_reader(pair[0].fileno())
        return generate_latest(registry).decode()

    text = busy_poll.run(main(), 100_000)
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if not line.startswith("#")}
    assert values["adrank_busy_poll_spins_total"] >= 1 and values["adrank_busy_poll_hits_total"] >= 1
    assert 0 < values["adrank_busy_poll_spin_seconds_total"] < 1.0


def test_no_busy_loop_no_metrics():
    from prometheus_client import CollectorRegistry

    async def main() -> object:
        return busy_poll.register_metrics(CollectorRegistry())

    assert busy_poll.run(main(), 0) is None
