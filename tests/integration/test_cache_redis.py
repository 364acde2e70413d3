"""Redis-specific behaviour of the embedding cache against a real redis-server and a real 3-node Redis Cluster."""

from __future__ import annotations

import cache_fixtures
import numpy as np
import pytest
import redis
from redis.crc import key_slot

from embedding_cache import CacheUnavailableError, InvalidLookupError, RedisWriter, RetentionConfig, open_reader
from embedding_cache.redis_client import READER, connect
from embedding_cache.redis_keys import bucket_of
from embedding_cache.redis_local import LocalRedisCluster

redis_server, redis_url, free_port = cache_fixtures.redis_server, cache_fixtures.redis_url, cache_fixtures.free_port
redis_cluster, redis_cluster_url = cache_fixtures.redis_cluster, cache_fixtures.redis_cluster_url
T0 = 1_700_000_000_000


def _publish(url: str, k: int, writer: RedisWriter | None = None) -> RedisWriter:
    w = writer or RedisWriter(url, "fm-v1", dim=4, codec="int8", retention=RetentionConfig(keep_snapshots=2))
    w.append_user_codes(np.array([1, 2]), np.array([T0 + k, T0 + k]), np.full((2, 4), k / 10, np.float32))
    w.append_ad_codes(np.array([7]), np.full((1, 4), k / 10, np.float32))
    w.publish()
    return w


def _user_key(snap: str, user_id: int) -> str:
    return f"adrank:{{fm-v1|u{bucket_of(user_id, 1024):04d}}}:{snap}:u:{user_id}"


def test_key_layout_and_pointer(redis_url: str) -> None:
    _publish(redis_url, 1)
    client = redis.Redis.from_url(redis_url)
    assert client.get("adrank:{fm-v1}:current") == b"s000001"
    assert {k.decode() for k in client.keys("adrank:{fm-v1}:s000001:*")} == {
        "adrank:{fm-v1}:s000001:meta", "adrank:{fm-v1}:s000001:state:prior"}
    data = {k.decode() for k in client.keys("adrank:{fm-v1|*}:s000001:*") if not k.endswith(b":live")}
    ad_key = f"adrank:{{fm-v1|a{bucket_of(7, 16):02d}}}:s000001:a:7"
    assert data == {_user_key("s000001", 1), _user_key("s000001", 2), ad_key}
    assert len(client.keys("adrank:{fm-v1|*}:s000001:live")) == 1024 + 16  # every bucket, empty or not
    assert len(client.get(_user_key("s000001", 1))) == 8 + 4 + 4 + 8  # ts + int8 codes + scale + event id
    assert client.smembers("adrank:versions") == {b"fm-v1"}


def test_retention_deletes_old_snapshots_and_stale_reader_recovers(redis_url: str) -> None:
    w = _publish(redis_url, 1)
    stale = open_reader("redis", redis_url, "fm-v1")
    _publish(redis_url, 2, w)
    _publish(redis_url, 3, w)  # keep_snapshots=2 deletes s000001
    client = redis.Redis.from_url(redis_url)
    assert client.keys("*:s000001:*") == []
    assert [s.decode() for s in client.lrange("adrank:{fm-v1}:snapshots", 0, -1)] == ["s000002", "s000003"]
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


# -- Redis Cluster ---------------------------------------------------------------------------------------------


def _cluster_publish(url: str, users: np.ndarray, k: int, writer: RedisWriter | None = None) -> RedisWriter:
    w = writer or RedisWriter(url, "fm-v1", dim=4, codec="int8", retention=RetentionConfig(keep_snapshots=2))
    w.append_user_codes(users, np.full(len(users), T0 + k), np.full((len(users), 4), k / 10, np.float32))
    w.append_ad_codes(np.arange(50), np.full((50, 4), k / 10, np.float32))
    w.publish()
    return w


def _keys_per_node(cluster: LocalRedisCluster, pattern: str) -> dict[int, int]:
    counts = {}
    for port in cluster.primary_ports():
        with cluster.node(port) as node:
            counts[port] = sum(1 for _ in node.scan_iter(match=pattern, count=1000))
    return counts


def test_cluster_tags_put_a_user_and_its_check_key_in_one_slot_and_the_pointer_with_meta(
        redis_cluster: LocalRedisCluster, redis_cluster_url: str) -> None:
    _cluster_publish(redis_cluster_url, np.arange(300), 1)
    fm_slot = {key_slot(k.encode()) for k in ("adrank:{fm-v1}:current", "adrank:{fm-v1}:seq",
                                               "adrank:{fm-v1}:snapshots", "adrank:{fm-v1}:s000001:meta")}
    assert len(fm_slot) == 1  # one MULTI flips current + the snapshot list; meta is on the same node
    user = _user_key("s000001", 42)
    live = user.rsplit(":u:", 1)[0].rsplit(":", 1)[0] + ":s000001:live"
    assert key_slot(user.encode()) == key_slot(live.encode())
    spread = _keys_per_node(redis_cluster, "adrank:{fm-v1|u*}:s000001:u:*")
    assert len(spread) == 3 and sum(spread.values()) == 300 and min(spread.values()) > 50  # users on every primary


def test_cluster_request_lookup_is_one_mget_on_one_node(redis_cluster: LocalRedisCluster,
                                                        redis_cluster_url: str) -> None:
    _cluster_publish(redis_cluster_url, np.arange(100), 1)
    reader = open_reader("redis", redis_cluster_url, "fm-v1")
    reader.lookup(5, T0 + 10, 8, np.zeros(0, np.int64))  # warm: connections opened

    nodes = [redis_cluster.node(port) for port in redis_cluster.primary_ports()]  # connected before counting

    def stats() -> dict[str, int]:
        out: dict[str, int] = {}
        for node in nodes:
            for name, row in node.info("commandstats").items():
                out[name] = out.get(name, 0) + int(row["calls"])
        return out

    before = stats()
    hb, _, _ = reader.lookup(7, T0 + 10, 8, np.zeros(0, np.int64))
    after = stats()
    calls = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    calls.pop("cmdstat_info", None)  # the counting itself
    assert calls == {"cmdstat_mget": 1} and hb.lengths[0] == 1
    _, codes, hit = reader.lookup(7, T0 + 10, 8, np.arange(60))  # ads too: one MGET per ad bucket, pipelined
    assert hit.tolist() == [True] * 50 + [False] * 10
    np.testing.assert_allclose(codes[:50], 0.1, atol=1e-2)


def test_cluster_retention_deletes_old_snapshots_on_every_node_and_reads_back(
        redis_cluster: LocalRedisCluster, redis_cluster_url: str) -> None:
    users = np.arange(200)
    w = _cluster_publish(redis_cluster_url, users, 1)
    stale = open_reader("redis", redis_cluster_url, "fm-v1")
    _cluster_publish(redis_cluster_url, users, 2, w)
    _cluster_publish(redis_cluster_url, users, 3, w)  # keep_snapshots=2 deletes s000001 on every primary
    assert sum(_keys_per_node(redis_cluster, "*:s000001:*").values()) == 0
    assert all(n > 0 for n in _keys_per_node(redis_cluster, "*:s000003:*").values())
    hb, ads, hit = stale.lookup(1, T0 + 100, 8, np.array([7]))  # its snapshot vanished: refresh + retry
    assert stale.snapshot_id == "s000003" and hb.lengths[0] == 3 and hit.all()
    _cluster_publish(redis_cluster_url, users, 4)  # a fresh writer reads s000003 back from all three primaries
    batch = open_reader("redis", redis_cluster_url, "fm-v1").user_history(users, T0 + 100, 8)
    assert (batch.lengths == 4).all()
    np.testing.assert_allclose(batch.codes[:, :4, 0], np.tile([0.4, 0.3, 0.2, 0.1], (200, 1)), atol=1e-2)


def test_cluster_url_forms(redis_cluster: LocalRedisCluster, redis_cluster_url: str) -> None:
    _cluster_publish(redis_cluster_url, np.arange(10), 1)
    one_seed = f"redis+cluster://127.0.0.1:{redis_cluster.ports[1]}/?socket_timeout=0.5"
    assert open_reader("redis", one_seed, "fm-v1").user_history(np.arange(10), T0 + 10, 4).lengths.tolist() == [1] * 10
    client = connect(one_seed, READER)
    assert client.get_default_node().redis_connection.connection_pool.connection_kwargs["socket_timeout"] == 0.5
    for bad, message in (("redis+cluster:///", "names no node"), ("redis+cluster://h:1/3", "only db 0"),
                         ("redis+cluster://h:1/?db=2", "unknown option"), ("redis+cluster://h/", "host:port")):
        with pytest.raises(InvalidLookupError, match=message):
            open_reader("redis", bad, "fm-v1")


def test_unreachable_cluster_is_typed() -> None:
    url = f"redis+cluster://127.0.0.1:{free_port()}/"
    with pytest.raises(CacheUnavailableError, match="unavailable"):
        open_reader("redis", url, "fm-v1")


def test_reader_timeouts_are_short_and_the_url_overrides_them() -> None:
    kwargs = connect("redis://127.0.0.1:1/0", READER).connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.5, 0.25)
    assert connect("redis://127.0.0.1:1/0?socket_timeout=2", READER).connection_pool.connection_kwargs[
        "socket_timeout"] == 2.0
