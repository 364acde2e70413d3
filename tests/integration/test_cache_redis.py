"""Redis-specific behaviour of the embedding cache against a real redis-server (no mocks)."""

from __future__ import annotations

import cache_fixtures
import numpy as np
import pytest
import redis

from embedding_cache import CacheUnavailableError, RedisWriter, RetentionConfig, open_reader

redis_server, redis_url, free_port = cache_fixtures.redis_server, cache_fixtures.redis_url, cache_fixtures.free_port
T0 = 1_700_000_000_000


def _publish(url: str, k: int, writer: RedisWriter | None = None) -> RedisWriter:
    w = writer or RedisWriter(url, "fm-v1", dim=4, codec="int8", retention=RetentionConfig(keep_snapshots=2))
    w.append_user_codes(np.array([1, 2]), np.array([T0 + k, T0 + k]), np.full((2, 4), k / 10, np.float32))
    w.append_ad_codes(np.array([7]), np.full((1, 4), k / 10, np.float32))
    w.publish()
    return w


def test_key_layout_and_pointer(redis_url: str) -> None:
    _publish(redis_url, 1)
    client = redis.Redis.from_url(redis_url)
    assert client.get("adrank:fm-v1:current") == b"s000001"
    keys = {k.decode() for k in client.keys("adrank:fm-v1:s000001:*")}
    assert {"adrank:fm-v1:s000001:meta", "adrank:fm-v1:s000001:u:1", "adrank:fm-v1:s000001:u:2",
            "adrank:fm-v1:s000001:a:7", "adrank:fm-v1:s000001:state:prior"} == keys
    assert len(client.get("adrank:fm-v1:s000001:u:1")) == 8 + 4 + 4 + 8  # ts + int8 codes + scale + event id
    assert client.smembers("adrank:versions") == {b"fm-v1"}


def test_retention_deletes_old_snapshots_and_stale_reader_recovers(redis_url: str) -> None:
    w = _publish(redis_url, 1)
    stale = open_reader("redis", redis_url, "fm-v1")
    _publish(redis_url, 2, w)
    _publish(redis_url, 3, w)  # keep_snapshots=2 deletes s000001
    client = redis.Redis.from_url(redis_url)
    assert client.keys("adrank:fm-v1:s000001:*") == []
    assert [s.decode() for s in client.lrange("adrank:fm-v1:snapshots", 0, -1)] == ["s000002", "s000003"]
    hb, ads, hit = stale.lookup(1, T0 + 100, 8, np.array([7]))  # its snapshot vanished: refresh + retry
    assert stale.snapshot_id == "s000003" and hb.lengths[0] == 3 and hit.all()
    np.testing.assert_allclose(ads[0], 0.3, atol=1e-2)


def test_fresh_writer_carries_previous_snapshot(redis_url: str) -> None:
    _publish(redis_url, 1)
    _publish(redis_url, 2)  # a new writer process: reads s000001 back from Redis
    hb = open_reader("redis", redis_url, "fm-v1").user_history(np.array([1, 2]), T0 + 100, 8)
    assert hb.lengths.tolist() == [2, 2]
    np.testing.assert_allclose(hb.codes[:, :2, 0], [[0.2, 0.1], [0.2, 0.1]], atol=1e-2)


def test_pinned_snapshot(redis_url: str) -> None:
    w = _publish(redis_url, 1)
    _publish(redis_url, 2, w)
    r = open_reader("redis", redis_url, "fm-v1", snapshot_id="s000001")
    assert r.user_history(np.array([1]), T0 + 100, 8).lengths[0] == 1 and not r.refresh()


def test_unavailable_redis_is_typed() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    with pytest.raises(CacheUnavailableError, match="unavailable"):
        open_reader("redis", url, "fm-v1")
