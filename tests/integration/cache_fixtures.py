"""Fixtures for the embedding-cache tests: a real redis-server and one factory per backend.

Imported by tests/integration/test_cache_*.py (the lead owns tests/conftest.py). The Redis server is
started once per session on a free 127.0.0.1 port with persistence off, and each test gets a flushed db.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
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
from embedding_cache.writer import SnapshotWriter

# "memory-numpy": the in-memory store with the fused kernel switched off, so the numpy lookup path passes
# the whole suite too (the other backends use the kernel whenever numba is installed).
BACKENDS = ("memory", "memory-numpy", "embedded", "redis")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_server() -> Iterator[str]:
    """URL of a private redis-server; skips when redis-server is not installed."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server not found: install it (apt-get install redis-server) to run the Redis tests")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    yield url
    client.close()
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture()
def redis_url(redis_server: str) -> str:
    redis.Redis.from_url(redis_server).flushdb()
    return redis_server


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
    return StoreFactory("redis", request.getfixturevalue("redis_url"))
