"""Connecting to one Redis node (`redis://`) or a Redis Cluster (`redis+cluster://`), and the multi-key reads,
scans and deletes whose shape differs between the two.

The reader and writer are written once against these helpers, so a cluster needs no second backend:

* `connect(url, READER)` returns `redis.Redis` or `redis.cluster.RedisCluster`. A cluster URL names one or more
  seed nodes, `redis+cluster://[user:password@]host:port[,host:port...]/[?socket_timeout=S&socket_connect_timeout=S]`;
  the client discovers the rest (CLUSTER SLOTS) and follows MOVED/ASK on its own.
* Readers fail fast: a short socket timeout and no client-side retry loop, because the caller (the ranking service)
  has a cheap answer for CacheUnavailableError (the population prior) and a request must not stall for seconds.
  redis-py's defaults (5 s timeouts, 10 retries with backoff, each retry on a cluster after a slot-map refresh)
  would turn one dead node into multi-second stalls. One cost stays: RedisCluster sleeps 0.25 s before raising
  on a CLUSTERDOWN reply (no setting removes it). Writers are offline and get patient settings.
* `mget_checked` sends single-slot MGETs, each with the key that proves its snapshot is still whole: one command
  on one node, a pipeline (one write and one read per node) on a cluster. `scan_keys` runs SCAN on every
  primary; `mget_many` and `unlink_keys` read and delete any keys slot by slot, pipelined.

Usage::

    client = connect("redis+cluster://127.0.0.1:7101,127.0.0.1:7102/", READER)
    with available("redis+cluster://..."):
        tag = "adrank:{fm-v1|u0007}:s000003"
        [[user]] = mget_checked(client, [(f"{tag}:live", [f"{tag}:u:42"])])   # None: snapshot deleted
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.retry import Retry

from embedding_cache.errors import CacheUnavailableError, InvalidLookupError

CLUSTER_SCHEME = "redis+cluster"
#: URL prefixes the Redis backend accepts (`redis+cluster://` selects RedisCluster, the others redis.Redis).
URL_SCHEMES: tuple[str, ...] = ("redis://", "rediss://", "unix://", f"{CLUSTER_SCHEME}://")
_CLUSTER_QUERY = ("socket_timeout", "socket_connect_timeout")
_CHUNK = 2_000

Client = redis.Redis | RedisCluster

# Cluster-level failures that mean "the data is not reachable right now", not a bug in the caller. redis-py raises
# RedisClusterException (no subclass) when a topology refresh finds no reachable node or an uncovered slot map;
# those are told apart from its programming errors (e.g. a cross-slot MGET) by their messages.
_UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.ClusterDownError,
                redis.exceptions.TryAgainError, redis.exceptions.SlotNotCoveredError)
_TOPOLOGY_MESSAGES = ("Redis Cluster cannot be connected", "All slots are not covered",
                      "startup_nodes could not agree")


@dataclass(frozen=True, kw_only=True)
class ClientSettings:
    """Socket timeouts and retries of one client role; a URL's query (socket_timeout=...) overrides the timeouts."""

    socket_timeout_s: float
    """Seconds a read or write on an open socket may block (redis-py `socket_timeout`)."""
    connect_timeout_s: float
    """Seconds a TCP connect may take (redis-py `socket_connect_timeout`); bounds the cost of a dead host."""
    retries: int
    """Client-side retries of a command after a connection error (a cluster refreshes its slot map first)."""


#: Request path: at most one socket timeout per lookup, one reconnect on a single node (a pooled connection the
#: server closed), no retry on a cluster (the failed call already refreshed the slot map for the next one).
#: A connect to a dead or unreachable host is what a failed node costs, so it gets the tighter bound; a read waits
#: on the server's event loop, which a CPU-starved host can stall for a few hundred ms (seen at 0.25 s on 2 shared,
#: throttled cores), so it gets twice that.
READER = ClientSettings(socket_timeout_s=0.5, connect_timeout_s=0.25, retries=0)
#: Publishing and retention: large pipelines on busy machines; a failed publish is never flipped, so waiting is safe.
WRITER = ClientSettings(socket_timeout_s=30.0, connect_timeout_s=2.0, retries=3)


def redact(url: str) -> str:
    """`url` with its password replaced by `***`, for messages and logs (a URL may carry `user:password@`)."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hosts = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.partition(':')[0]}:***@{hosts}"


def is_cluster_url(url: str) -> bool:
    return url.startswith(f"{CLUSTER_SCHEME}://")


def _cluster_nodes(url: str) -> tuple[list[ClusterNode], dict[str, Any]]:
    parts = urlsplit(url)
    netloc, kwargs = parts.netloc, {}
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        user, _, password = userinfo.partition(":")
        kwargs.update({k: unquote(v) for k, v in (("username", user), ("password", password)) if v})
    nodes = []
    for item in filter(None, netloc.split(",")):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidLookupError(f"cluster URL {redact(url)!r}: node {item!r} is not host:port")
        nodes.append(ClusterNode(host.strip("[]"), int(port)))
    if not nodes:
        raise InvalidLookupError(f"cluster URL {redact(url)!r} names no node; "
                                 f"use {CLUSTER_SCHEME}://host:port[,host:port]/")
    if parts.path not in ("", "/", "/0"):
        raise InvalidLookupError(f"cluster URL {redact(url)!r}: a cluster has only db 0, got path {parts.path!r}")
    for key, value in parse_qsl(parts.query):
        if key not in _CLUSTER_QUERY:
            raise InvalidLookupError(f"cluster URL {redact(url)!r}: unknown option {key!r}; "
                                     f"known: {list(_CLUSTER_QUERY)}")
        kwargs[key] = float(value)
    return nodes, kwargs


def connect(url: str, settings: ClientSettings) -> Client:
    """A client for `url`: RedisCluster for redis+cluster://, redis.Redis otherwise (nothing is contacted yet
    for a single node; a cluster client reads the slot map from a seed node at once)."""
    backoff = NoBackoff() if settings.retries == 0 else ExponentialWithJitterBackoff(cap=1.0, base=0.05)
    if not is_cluster_url(url):
        single_retries = max(settings.retries, 1)  # one immediate reconnect when the server closed a pooled socket
        retry = Retry(NoBackoff() if settings.retries == 0 else backoff, single_retries)
        return redis.Redis.from_url(url, socket_timeout=settings.socket_timeout_s,
                                    socket_connect_timeout=settings.connect_timeout_s, retry=retry)
    nodes, kwargs = _cluster_nodes(url)
    kwargs.setdefault("socket_timeout", settings.socket_timeout_s)
    kwargs.setdefault("socket_connect_timeout", settings.connect_timeout_s)
    with available(url):
        return RedisCluster(startup_nodes=nodes, retry=Retry(backoff, settings.retries), **kwargs)


@contextmanager
def available(url: str) -> Iterator[None]:
    """Turn "Redis cannot serve this now" into CacheUnavailableError (gRPC UNAVAILABLE), on one node or a cluster."""
    try:
        yield
    except _UNAVAILABLE as exc:
        raise CacheUnavailableError(f"redis at {redact(url)} unavailable: {type(exc).__name__}: {exc}") from exc
    except redis.exceptions.RedisClusterException as exc:
        if not str(exc).startswith(_TOPOLOGY_MESSAGES):
            raise
        raise CacheUnavailableError(f"redis cluster at {redact(url)} unavailable: {exc}") from exc


def mget_checked(client: Client, groups: list[tuple[str, list[str]]]) -> list[list[bytes | None]] | None:
    """Values of each group's keys, or None when a group's check key is missing (its snapshot is being deleted).

    `groups` is [(check_key, keys)], every group in one hash slot on a cluster. The check key is deleted before
    any other key of a snapshot, so finding it in the same atomic MGET as the keys proves they were all present.
    A single node gets one MGET of the first check key and every key (one round trip, atomic). A cluster gets one
    MGET per group, sent as one pipeline: commands for one node go out in one write, every node is written before
    any is read, so the cost is about one round trip to the slowest node involved.
    """
    if not isinstance(client, RedisCluster):
        flat = client.mget([groups[0][0]] + [key for _, keys in groups for key in keys])
        if flat[0] is None:
            return None
        out, start = [], 1
        for _, keys in groups:
            out.append(flat[start:start + len(keys)])
            start += len(keys)
        return out
    if len(groups) == 1:
        replies = [client.mget([groups[0][0], *groups[0][1]])]
    else:
        pipe = client.pipeline(transaction=False)
        for check, keys in groups:
            pipe.execute_command("MGET", check, *keys)  # ClusterPipeline.mget() is blocked; the raw one routes by slot
        replies = pipe.execute()
    if any(reply[0] is None for reply in replies):
        return None
    return [reply[1:] for reply in replies]


def primaries(client: Client) -> list[redis.Redis]:
    """One plain client per primary (the node itself when not a cluster)."""
    if isinstance(client, RedisCluster):
        return [client.get_redis_connection(node) for node in client.get_primaries()]
    return [client]


def scan_keys(client: Client, pattern: str, count: int = 1_000) -> Iterator[bytes]:
    """Every key matching `pattern`, from SCAN on each primary (a cluster's SCAN only sees one node's keys)."""
    for node in primaries(client):
        yield from node.scan_iter(match=pattern, count=count)


def by_slot(keys: Iterable[bytes | str]) -> dict[int, list[bytes | str]]:
    """Keys grouped by hash slot (what a cluster's multi-key commands require)."""
    slots: dict[int, list[bytes | str]] = {}
    for key in keys:
        slots.setdefault(key_slot(key.encode() if isinstance(key, str) else key), []).append(key)
    return slots


def chunks(keys: list, size: int = _CHUNK) -> Iterator[list]:
    for i in range(0, len(keys), size):
        yield keys[i:i + size]


def slot_groups(client: Client, keys: Iterable[bytes | str]) -> list[list]:
    """Chunks of `keys` that each fit one multi-key command (one slot on a cluster, any keys on one node)."""
    keys = list(keys)
    if not isinstance(client, RedisCluster):
        return list(chunks(keys))
    return [chunk for group in by_slot(keys).values() for chunk in chunks(group)]


def mget_many(client: Client, keys: Iterable[bytes | str]) -> Iterator[tuple[bytes | str, bytes | None]]:
    """(key, value) of any number of keys in any slots: MGETs of one slot chunk each, pipelined 100 at a time."""
    for batch in chunks(slot_groups(client, keys), 100):
        pipe = client.pipeline(transaction=False)
        for group in batch:
            pipe.execute_command("MGET", *group)
        for group, values in zip(batch, pipe.execute(), strict=True):
            yield from zip(group, values, strict=True)


def unlink_keys(client: Client, keys: Iterable[bytes | str]) -> int:
    """UNLINK `keys` (freed in the background), one command per slot chunk, pipelined; returns how many existed."""
    groups = slot_groups(client, keys)
    removed = 0
    for batch in chunks(groups, 500):
        pipe = client.pipeline(transaction=False)
        for group in batch:
            pipe.execute_command("UNLINK", *group)
        removed += sum(int(n) for n in pipe.execute())
    return removed
