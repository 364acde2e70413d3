"""The Redis key layout of one fm_version and the snapshot view read from it.

Shared by the reader/writer (`redis_backend.py`) and the whole-snapshot scan (`redis_scan.py`); kept
apart so neither of those imports the other's private names. See `redis_backend.py` for the layout.

Usage::

    keys = RedisKeys("adrank", "fm-v1")
    view = load_view(client, keys, "000007")   # SnapshotNotFoundError if its meta is gone
    client.get(keys.user(view.snapshot_id, 42))
"""

from __future__ import annotations

import json

import numpy as np
import redis

from embedding_cache.codecs import Codec, codec_from_manifest
from embedding_cache.errors import SnapshotNotFoundError
from embedding_cache.reader import ViewInfo


class RedisKeys:
    """Key names of one fm_version (the single place the layout is spelled out)."""

    def __init__(self, prefix: str, fm_version: str) -> None:
        self.prefix, self.fm = prefix, fm_version
        self.versions = f"{prefix}:versions"
        self.seq = f"{prefix}:{fm_version}:seq"
        self.current = f"{prefix}:{fm_version}:current"
        self.snapshots = f"{prefix}:{fm_version}:snapshots"

    def snap(self, snapshot_id: str) -> str:
        return f"{self.prefix}:{self.fm}:{snapshot_id}"

    def meta(self, snapshot_id: str) -> str:
        return f"{self.snap(snapshot_id)}:meta"

    def state(self, snapshot_id: str, name: str) -> str:
        return f"{self.snap(snapshot_id)}:state:{name}"

    def user(self, snapshot_id: str, user_id: int) -> str:
        return f"{self.snap(snapshot_id)}:u:{user_id}"

    def ad(self, snapshot_id: str, ad_id: int) -> str:
        return f"{self.snap(snapshot_id)}:a:{ad_id}"


class RedisView:
    """Everything a reader needs about one snapshot; swapped as one reference on refresh."""

    def __init__(self, keys: RedisKeys, snapshot_id: str, meta: dict, codec: Codec, prior: np.ndarray) -> None:
        self.snapshot_id, self.meta, self.codec, self.prior = snapshot_id, meta, codec, prior
        self.meta_key = keys.meta(snapshot_id)
        self.user_prefix = f"{keys.snap(snapshot_id)}:u:"
        self.ad_prefix = f"{keys.snap(snapshot_id)}:a:"
        self.bpr = codec.bytes_per_row
        self.scale_bytes = 4 if codec.has_row_scale else 0
        self.id_bytes = 8 if meta.get("event_ids") else 0  # snapshots written before event ids have none
        self.row_bytes = 8 + self.bpr + self.scale_bytes + self.id_bytes
        self.info = ViewInfo(snapshot_id, prior)


def load_view(client: redis.Redis, keys: RedisKeys, snapshot_id: str) -> RedisView:
    """The meta, codec and state of a published snapshot (SnapshotNotFoundError when its meta is gone)."""
    raw_meta = client.get(keys.meta(snapshot_id))
    if raw_meta is None:
        raise SnapshotNotFoundError(f"redis snapshot {snapshot_id} of {keys.fm} not found (deleted or never written)")
    meta = json.loads(raw_meta)
    state = {}
    for name in meta["state"]:
        state[name] = np.frombuffer(client.get(keys.state(snapshot_id, name)) or b"", np.float32)
    return RedisView(keys, snapshot_id, meta, codec_from_manifest(meta["codec"], state), state["prior"])
