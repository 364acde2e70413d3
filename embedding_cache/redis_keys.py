"""The Redis key layout of one fm_version and the snapshot view read from it.

Shared by the reader/writer (`redis_backend.py`) and the whole-snapshot scan (`redis_scan.py`); kept
apart so neither of those imports the other's private names. The same names serve one node and a
Redis Cluster; the `{...}` parts are hash tags, so they decide the slot (see docs/cache.md):

    adrank:versions                           SET of fm_versions with data (its own slot)
    adrank:{fm}:seq | :current | :snapshots   the fm_version's slot: INCR counter, current snapshot id, LIST of ids
    adrank:{fm}:{snap}:meta | :state:{name}   same slot: JSON meta, float32 prior / pq_centroids
    adrank:{fm|uBBBB}:{snap}:u:{user_id}      user bucket BBBB = fib_hash(user_id) over 1024 buckets
    adrank:{fm|aBB}:{snap}:a:{ad_id}          ad bucket BB = fib_hash(ad_id) over 16 buckets
    adrank:{fm|...}:{snap}:live               one per bucket and snapshot: the bucket's check key

Why these tags: the pointer, counter, list and meta of an fm_version share one slot, so the switch to a new
snapshot is one MULTI on one node (atomic for every reader in the cluster). A user's packed history is one value in
one bucket, and the bucket's `live` key sits next to it, so a request's user read is a single-slot MGET
`[live, u:{user}]`: one round trip to one node that also proves the snapshot has not been deleted by retention
(retention deletes every `live` key before any data). Buckets, not one slot per user, keep the number of check
keys small (1,024 per snapshot) while spreading users over every primary.

Usage::

    keys = RedisKeys("adrank", "fm-v1")
    view = load_view(client, keys, "s000007")   # SnapshotNotFoundError if its meta is gone
    client.mget([view.user_live(42), view.user_key(42)])
"""

from __future__ import annotations

import json

import numpy as np

from embedding_cache.codecs import Codec, codec_from_manifest
from embedding_cache.errors import SnapshotNotFoundError
from embedding_cache.reader import ViewInfo
from embedding_cache.redis_client import Client

USER_BUCKETS = 1024
AD_BUCKETS = 16
_FIB = 0x9E3779B97F4A7C15  # 2**64 / golden ratio: Fibonacci hashing spreads dense and strided ids alike
_MASK = (1 << 64) - 1


def check_buckets(n: int, field: str) -> int:
    if not isinstance(n, int) or n < 1 or n > 16384 or n & (n - 1):
        raise ValueError(f"{field} must be a power of two in [1, 16384], got {n!r}")
    return n


def bucket_of(item_id: int, buckets: int) -> int:
    """Bucket of one id: the top log2(buckets) bits of id * 2**64/phi (ids that are multiples of a power of two,
    like hashed or strided ids, still spread evenly, which a plain `id % buckets` would not do)."""
    if buckets == 1:
        return 0
    return ((item_id * _FIB) & _MASK) >> (64 - buckets.bit_length() + 1)


def buckets_of(ids: np.ndarray, buckets: int) -> np.ndarray:
    """`bucket_of` for an int64 array (uint64 multiplication wraps modulo 2**64 exactly like the masked int)."""
    if buckets == 1 or not len(ids):
        return np.zeros(len(ids), np.int64)
    shift = np.uint64(64 - buckets.bit_length() + 1)
    return ((np.asarray(ids).astype(np.uint64) * np.uint64(_FIB)) >> shift).astype(np.int64)


class RedisKeys:
    """Key names of one fm_version (the single place the layout is spelled out)."""

    def __init__(self, prefix: str, fm_version: str) -> None:
        self.prefix, self.fm = prefix, fm_version
        self.tag = f"{prefix}:{{{fm_version}}}"
        self.versions = f"{prefix}:versions"
        self.seq = f"{self.tag}:seq"
        self.current = f"{self.tag}:current"
        self.snapshots = f"{self.tag}:snapshots"

    def meta(self, snapshot_id: str) -> str:
        return f"{self.tag}:{snapshot_id}:meta"

    def state(self, snapshot_id: str, name: str) -> str:
        return f"{self.tag}:{snapshot_id}:state:{name}"

    def user_bucket(self, bucket: int) -> str:
        return f"{self.prefix}:{{{self.fm}|u{bucket:04d}}}"

    def ad_bucket(self, bucket: int) -> str:
        return f"{self.prefix}:{{{self.fm}|a{bucket:02d}}}"

    def snapshot_patterns(self, snapshot_id: str) -> tuple[str, str]:
        """SCAN patterns of every key of a snapshot: the fm_version slot's and the buckets'."""
        return f"{self.tag}:{snapshot_id}:*", f"{self.prefix}:{{{self.fm}|*}}:{snapshot_id}:*"

    def user_pattern(self, snapshot_id: str) -> str:
        return f"{self.prefix}:{{{self.fm}|u*}}:{snapshot_id}:u:*"

    def ad_pattern(self, snapshot_id: str) -> str:
        return f"{self.prefix}:{{{self.fm}|a*}}:{snapshot_id}:a:*"


class BucketKeys:
    """Key prefixes of one snapshot's buckets, built once per view so a lookup only appends an id."""

    def __init__(self, keys: RedisKeys, snapshot_id: str, user_buckets: int, ad_buckets: int) -> None:
        self.user_buckets, self.ad_buckets = user_buckets, ad_buckets
        users = [keys.user_bucket(b) for b in range(user_buckets)]
        ads = [keys.ad_bucket(b) for b in range(ad_buckets)]
        self.user_prefix = [f"{tag}:{snapshot_id}:u:" for tag in users]
        self.ad_prefix = [f"{tag}:{snapshot_id}:a:" for tag in ads]
        self.user_live = [f"{tag}:{snapshot_id}:live" for tag in users]
        self.ad_live = [f"{tag}:{snapshot_id}:live" for tag in ads]

    def user(self, user_id: int) -> str:
        return self.user_prefix[bucket_of(user_id, self.user_buckets)] + str(user_id)

    def ad(self, ad_id: int) -> str:
        return self.ad_prefix[bucket_of(ad_id, self.ad_buckets)] + str(ad_id)

    def all_live(self) -> list[str]:
        return self.user_live + self.ad_live


class RedisView:
    """Everything a reader needs about one snapshot; swapped as one reference on refresh."""

    def __init__(self, keys: RedisKeys, snapshot_id: str, meta: dict, codec: Codec, prior: np.ndarray) -> None:
        self.snapshot_id, self.meta, self.codec, self.prior = snapshot_id, meta, codec, prior
        self.meta_key = keys.meta(snapshot_id)
        layout = meta.get("layout", {})
        self.buckets = BucketKeys(keys, snapshot_id, int(layout.get("user_buckets", USER_BUCKETS)),
                                  int(layout.get("ad_buckets", AD_BUCKETS)))
        self.bpr = codec.bytes_per_row
        self.scale_bytes = 4 if codec.has_row_scale else 0
        self.id_bytes = 8 if meta.get("event_ids") else 0  # snapshots written before event ids have none
        self.row_bytes = 8 + self.bpr + self.scale_bytes + self.id_bytes
        self.info = ViewInfo(snapshot_id, prior)


def load_view(client: Client, keys: RedisKeys, snapshot_id: str) -> RedisView:
    """The meta, codec and state of a published snapshot (SnapshotNotFoundError when its meta is gone)."""
    raw_meta = client.get(keys.meta(snapshot_id))
    if raw_meta is None:
        raise SnapshotNotFoundError(f"redis snapshot {snapshot_id} of {keys.fm} not found (deleted or never written)")
    meta = json.loads(raw_meta)
    names = list(meta["state"])
    values = client.mget([keys.state(snapshot_id, name) for name in names]) if names else []  # one slot: {fm}
    state = {name: np.frombuffer(value or b"", np.float32) for name, value in zip(names, values, strict=True)}
    return RedisView(keys, snapshot_id, meta, codec_from_manifest(meta["codec"], state), state["prior"])
