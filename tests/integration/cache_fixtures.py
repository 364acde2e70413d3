"""Fixtures for the embedding-cache tests: a real redis-server, a real 3-node Redis Cluster, one factory per backend.

Imported by tests/integration/test_cache_*.py (the lead owns tests/conftest.py). The Redis server and the cluster
(3 primaries, no replicas, `redis-cli --cluster create`) are started once per session on free 127.0.0.1 ports with
persistence off, and each test gets them flushed. Both skip, saying what to install, without redis-server/redis-cli.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from embedding_cache import (
    CacheReader,
    EmbeddedWriter,
    InMemoryStore,
    RedisWriter,
    RetentionConfig,
    open_reader,
)
from embedding_cache.kernels import ENV_SWITCH
from embedding_cache.redis_local import LocalRedis, LocalRedisCluster, RedisNotInstalledError, free_port
from embedding_cache.writer import SnapshotWriter

# "memory-numpy": the in-memory store with the fused kernel switched off, so the numpy lookup path passes
# the whole suite too (the other backends use the kernel whenever numba is installed).
BACKENDS = ("memory", "memory-numpy", "embedded", "redis", "redis-cluster")
__all__ = ["free_port"]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """URL of a private redis-server; skips when redis-server is not installed."""
    try:
        server = LocalRedis()
    except RedisNotInstalledError as exc:
        pytest.skip(str(exc))
    yield server.url
    server.stop()


@pytest.fixture()
def redis_url(redis_server: str) -> str:
    with redis.Redis.from_url(redis_server) as client:
        client.flushdb()
    return redis_server


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalRedisCluster]:
    """A private 3-primary Redis Cluster (no replicas); skips when redis-server or redis-cli is missing."""
    try:
        cluster = LocalRedisCluster(primaries=3, replicas=0)
    except RedisNotInstalledError as exc:
        pytest.skip(str(exc))
    yield cluster
    cluster.stop()


@pytest.fixture()
def redis_cluster_url(redis_cluster: LocalRedisCluster) -> str:
    redis_cluster.flushall()
    return redis_cluster.url


@dataclass
class StoreFactory:
    """Writers and readers of one backend, so a test is written once for all backends."""

    backend: str
    location: str | Path | InMemoryStore

    def writer(self, fm_version: str, dim: int = 8, codec: str = "float32",
               retention: RetentionConfig | None = None) -> SnapshotWriter:
        if self.backend == "memory":
            return self.location.writer(fm_version, dim, codec, retention)
        if self.backend == "embedded":
            return EmbeddedWriter(self.location, fm_version, dim, codec, retention)
        return RedisWriter(str(self.location), fm_version, dim, codec, retention)

    def reader(self, fm_version: str, **kwargs: object) -> CacheReader:
        return open_reader(self.backend, self.location, fm_version, **kwargs)

    @staticmethod
    def fresh_version() -> str:
        return f"fm-{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    if request.param == "memory":
        return StoreFactory("memory", InMemoryStore())
    if request.param == "memory-numpy":
        request.getfixturevalue("monkeypatch").setenv(ENV_SWITCH, "numpy")
        return StoreFactory("memory", InMemoryStore())
    if request.param == "embedded":
        return StoreFactory("embedded", tmp_path / "cache")
    if request.param == "redis":
        return StoreFactory("redis", request.getfixturevalue("redis_url"))
    return StoreFactory("redis", request.getfixturevalue("redis_cluster_url"))
