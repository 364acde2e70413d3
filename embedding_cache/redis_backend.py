"""Redis backend (one node or a Redis Cluster): one packed value per user and per ad, and a `current` pointer.

Key layout (prefix "adrank"; `{...}` are hash tags; see redis_keys.py and docs/cache.md):

    adrank:versions                         SET of fm_versions with data
    adrank:{fm}:seq                         INCR counter for snapshot ids
    adrank:{fm}:current                     current snapshot id (one MULTI flips it, with the list below)
    adrank:{fm}:snapshots                   LIST of published ids, oldest first (retention)
    adrank:{fm}:{snap}:meta                 JSON: dim, codec params, counts, created_ms, max_segment, layout
    adrank:{fm}:{snap}:state:{name}         float32 bytes: prior (cold start), pq_centroids (pq only)
    adrank:{fm|uBBBB}:{snap}:u:{user_id}    n x int64 ts (ascending) | n x code bytes | n x float32 scale (int8)
                                            | n x int64 event id (meta "event_ids": true; -1 = none given)
    adrank:{fm|aBB}:{snap}:a:{ad_id}        code bytes | float32 scale (int8)
    adrank:{fm|...}:{snap}:live             per bucket: present while the snapshot is whole

On one node a request is one MGET [meta, user, ads...]: one round trip, atomic, and `meta` rides along so a reader
whose snapshot was deleted by retention notices (meta is None), refreshes and retries instead of returning misses.
On a cluster the same request is one single-slot MGET [live, user] (plus one MGET per ad bucket when ads are asked
for, pipelined), each carrying its bucket's `live` key for the same check.
"""

from __future__ import annotations

import json

import numpy as np
from prometheus_client.registry import CollectorRegistry
from redis.cluster import RedisCluster

from embedding_cache.config import LookupLimits, RetentionConfig
from embedding_cache.csr import RawHistory
from embedding_cache.errors import CacheError, FmVersionMismatchError, SnapshotNotFoundError
from embedding_cache.reader import CacheReader, ViewInfo, check_fm_version
from embedding_cache.redis_client import READER, WRITER, available, connect, mget_checked, scan_keys, unlink_keys
from embedding_cache.redis_keys import (
    AD_BUCKETS,
    USER_BUCKETS,
    BucketKeys,
    RedisKeys,
    RedisView,
    buckets_of,
    check_buckets,
    load_view,
)
from embedding_cache.redis_scan import read_snapshot
from embedding_cache.snapshot_data import SnapshotData
from embedding_cache.writer import SnapshotWriter, format_snapshot_id

_BATCH = 2_000


class RedisReader(CacheReader):
    """Reads one fm_version from Redis or a Redis Cluster; a request's lookup is one round trip (on a cluster,
    asking for ads adds one MGET per ad bucket to the same pipeline).

    `url` is redis://HOST:PORT/DB or redis+cluster://HOST:PORT[,HOST:PORT...]/ (see redis_client.py). Socket
    timeouts are short and there is no retry loop: an unreachable node costs at most one timeout and raises
    CacheUnavailableError; the next call finds the refreshed topology (a promoted replica, a returned node).
    """

    backend = "redis"

    def __init__(self, url: str, fm_version: str, *, snapshot_id: str | None = None, prefix: str = "adrank",
                 limits: LookupLimits | None = None, registry: CollectorRegistry | None = None) -> None:
        super().__init__(fm_version, limits or LookupLimits(), registry)
        self.url = url
        self._keys = RedisKeys(prefix, fm_version)
        self._pinned = snapshot_id
        self._client = connect(url, READER)
        self._cluster = isinstance(self._client, RedisCluster)
        self._view = self._open(snapshot_id)

    def _open(self, snapshot_id: str | None) -> RedisView:
        with available(self.url):
            if snapshot_id is None:
                current = self._client.get(self._keys.current)
                if current is None:
                    if self._client.sismember(self._keys.versions, self.fm_version):
                        raise SnapshotNotFoundError(f"fm_version {self.fm_version} has no published snapshot")
                    known = sorted(v.decode() for v in self._client.smembers(self._keys.versions))
                    raise FmVersionMismatchError(
                        f"redis {self.url} has no embeddings for fm_version {self.fm_version!r}; it has {known}")
                snapshot_id = current.decode()
            view = load_view(self._client, self._keys, snapshot_id)
        if view.meta.get("fm_version") != self.fm_version:
            raise FmVersionMismatchError(f"snapshot {snapshot_id} is {view.meta.get('fm_version')}")
        self.metrics.record_snapshot(view.snapshot_id, int(view.meta["created_ms"]))
        return view

    @property
    def dim(self) -> int:
        return self._view.codec.dim

    @property
    def snapshot_id(self) -> str:
        return self._view.snapshot_id

    @property
    def coverage(self) -> dict:
        return dict(self._view.meta.get("coverage", {}))

    @property
    def codec_name(self) -> str:
        return self._view.codec.name

    @property
    def population_prior(self) -> np.ndarray:
        return self._view.prior

    def refresh(self) -> bool:
        if self._pinned:
            return False
        try:
            with available(self.url):
                current = self._client.get(self._keys.current)
            if current is None or current.decode() == self._view.snapshot_id:
                return False
            self._view = self._open(current.decode())
            return True
        except CacheError:
            self.metrics.record_refresh_failure()
            raise

    def close(self) -> None:
        self._client.close()

    # -- lookups ---------------------------------------------------------------------------------------
    def _groups(self, view: RedisView, user_ids: np.ndarray, ad_ids: np.ndarray
                ) -> tuple[list[tuple[str, list[str]]], list[list[int]]]:
        """Keys to read, as [(check key, keys)] groups, and each key's position in [users..., ads...].

        One node: a single group checked by `meta` (one atomic MGET). A cluster: one group per bucket, each checked
        by its bucket's `live` key and lying in one slot. A request (1 user) has one user group; its ads add at most
        one group per ad bucket.
        """
        b = view.buckets
        if not self._cluster:
            keys = [b.user(u) for u in user_ids.tolist()] + [b.ad(a) for a in ad_ids.tolist()]
            return [(view.meta_key, keys)], [list(range(len(keys)))]
        groups: dict[tuple[str, int], tuple[list[str], list[int]]] = {}
        pos = 0
        for kind, ids, nb, prefixes in (("u", user_ids, b.user_buckets, b.user_prefix),
                                        ("a", ad_ids, b.ad_buckets, b.ad_prefix)):
            for item, bucket in zip(ids.tolist(), buckets_of(ids, nb).tolist(), strict=True):
                keys, positions = groups.setdefault((kind, bucket), ([], []))
                keys.append(prefixes[bucket] + str(item))
                positions.append(pos)
                pos += 1
        if not groups:
            return [(view.meta_key, [])], [[]]
        lives = {"u": b.user_live, "a": b.ad_live}
        return ([(lives[kind][bucket], keys) for (kind, bucket), (keys, _) in groups.items()],
                [positions for _, positions in groups.values()])

    def _mget(self, user_ids: np.ndarray, ad_ids: np.ndarray) -> tuple[RedisView, list, list]:
        """Values of [users..., ads...] from one view; retried once on a fresh view if the snapshot vanished."""
        n, total = len(user_ids), len(user_ids) + len(ad_ids)
        for attempt in range(2):
            view = self._view
            groups, positions = self._groups(view, user_ids, ad_ids)
            with available(self.url):
                replies = mget_checked(self._client, groups)
            if replies is not None:
                if len(replies) == 1:
                    values = replies[0]
                else:
                    values = [None] * total
                    for reply, where in zip(replies, positions, strict=True):
                        for p, value in zip(where, reply, strict=True):
                            values[p] = value
                return view, values[:n], values[n:]
            if attempt == 0 and not self._pinned:
                self.refresh()
        raise SnapshotNotFoundError(f"snapshot {self._view.snapshot_id} of {self.fm_version} was deleted")

    @staticmethod
    def _decode_users(view: RedisView, values: list, t: np.ndarray, max_len: int) -> RawHistory:
        b, bpr, sb = len(values), view.bpr, view.scale_bytes
        raw = np.zeros((b, max_len, bpr), np.uint8)
        scales = np.zeros((b, max_len), np.float32)
        stamps = np.zeros((b, max_len), np.int64)
        lengths = np.zeros(b, np.int64)
        row_bytes = view.row_bytes
        for i, value in enumerate(values):  # per user (B = 1 when serving), never per row
            if not value:
                continue
            n = len(value) // row_bytes
            ts = np.frombuffer(value, np.int64, n)
            cut = int(np.searchsorted(ts, t[i]))
            k = min(cut, max_len)
            if not k:
                continue
            lengths[i] = k
            stamps[i, :k] = ts[cut - k:cut][::-1]
            codes = np.frombuffer(value, np.uint8, n * bpr, 8 * n).reshape(n, bpr)
            raw[i, :k] = codes[cut - k:cut][::-1]
            if sb:
                scales[i, :k] = np.frombuffer(value, np.float32, n, (8 + bpr) * n)[cut - k:cut][::-1]
        out = np.zeros((b, max_len, view.codec.dim), np.float32)
        mask = np.arange(max_len)[None, :] < lengths[:, None]
        if mask.any():
            out[mask] = view.codec.decode(raw[mask], scales[mask])
        return RawHistory(out, lengths, stamps)

    @staticmethod
    def _decode_ads(view: RedisView, values: list) -> tuple[np.ndarray, np.ndarray]:
        hit = np.fromiter((v is not None for v in values), bool, len(values))
        out = np.zeros((len(values), view.codec.dim), np.float32)
        if hit.any():
            blob = np.frombuffer(b"".join(v for v in values if v is not None), np.uint8)
            rows = blob.reshape(int(hit.sum()), view.bpr + view.scale_bytes)
            scales = rows[:, view.bpr:].copy().view(np.float32).ravel() if view.scale_bytes else rows[:0, 0]
            out[hit] = view.codec.decode(np.ascontiguousarray(rows[:, :view.bpr]), scales)
        return out, hit

    def _users(self, user_ids: np.ndarray, t: np.ndarray, max_len: int) -> tuple[RawHistory, ViewInfo]:
        view, uvals, _ = self._mget(user_ids, user_ids[:0])
        return self._decode_users(view, uvals, t, max_len), view.info

    def _ads(self, ad_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, ViewInfo]:
        view, _, avals = self._mget(ad_ids[:0], ad_ids)
        codes, hit = self._decode_ads(view, avals)
        return codes, hit, view.info

    def _request(self, user_id: int, t: int, max_len: int, ad_ids: np.ndarray
                 ) -> tuple[RawHistory, np.ndarray, np.ndarray, ViewInfo]:
        view, uvals, avals = self._mget(np.array([user_id], np.int64), ad_ids)
        raw = self._decode_users(view, uvals, np.array([t], np.int64), max_len)
        codes, hit = self._decode_ads(view, avals)
        return raw, codes, hit, view.info


class RedisWriter(SnapshotWriter):
    """Publishes snapshots to Redis or a Redis Cluster: write every key of a new snapshot, then flip `current`.

    The previous snapshot is kept in this process for carrying rows into the next publish; a fresh writer
    process reads it back from Redis once (SCAN of its user and ad keys on every primary). `user_buckets` and
    `ad_buckets` (powers of two, recorded in the snapshot's meta) set how many hash-tagged buckets the users and
    ads are spread over; see redis_keys.py.
    """

    def __init__(self, url: str, fm_version: str, dim: int, codec: str = "int8",
                 retention: RetentionConfig | None = None, prefix: str = "adrank", *,
                 user_buckets: int = USER_BUCKETS, ad_buckets: int = AD_BUCKETS, **codec_params: int) -> None:
        super().__init__(check_fm_version(fm_version), dim, codec, retention, **codec_params)
        self.url = url
        self.user_buckets = check_buckets(user_buckets, "user_buckets")
        self.ad_buckets = check_buckets(ad_buckets, "ad_buckets")
        self._keys = RedisKeys(prefix, fm_version)
        self._client = connect(url, WRITER)
        self._last: SnapshotData | None = None

    def _load_base(self) -> SnapshotData | None:
        with available(self.url):
            current = self._client.get(self._keys.current)
            if current is None:
                return None
            if self._last is not None and self._last.snapshot_id == current.decode():
                return self._last
            return read_snapshot(self._client, self._keys, current.decode())

    def _next_snapshot_id(self) -> str:
        with available(self.url):
            return format_snapshot_id(int(self._client.incr(self._keys.seq)))

    def _store(self, data: SnapshotData) -> None:
        keys, sid = self._keys, data.snapshot_id
        buckets = BucketKeys(keys, sid, self.user_buckets, self.ad_buckets)
        with available(self.url):
            pipe = self._client.pipeline(transaction=False)
            off, ts, codes, scales, eids = data.offsets, data.ts, data.codes, data.scales, data.event_ids
            user_bucket = buckets_of(data.user_ids, self.user_buckets).tolist()
            for i, uid in enumerate(data.user_ids.tolist()):
                s, e = int(off[i]), int(off[i + 1])
                value = (ts[s:e].tobytes() + codes[s:e].tobytes() + (scales[s:e].tobytes() if len(scales) else b"")
                         + eids[s:e].tobytes())
                pipe.set(buckets.user_prefix[user_bucket[i]] + str(uid), value)
                if len(pipe) >= _BATCH:
                    pipe.execute()
            ad_bucket = buckets_of(data.ad_ids, self.ad_buckets).tolist()
            for i, aid in enumerate(data.ad_ids.tolist()):
                scale = data.ad_scales[i:i + 1].tobytes() if len(data.ad_scales) else b""
                pipe.set(buckets.ad_prefix[ad_bucket[i]] + str(aid), data.ad_codes[i].tobytes() + scale)
                if len(pipe) >= _BATCH:
                    pipe.execute()
            for live in buckets.all_live():  # every bucket, empty or not: readers check them on every lookup
                pipe.set(live, sid)
                if len(pipe) >= _BATCH:
                    pipe.execute()
            pipe.execute()  # data and check keys are stored on every node before meta says the snapshot is whole
            state = {"prior": data.prior, **data.codec.state()}
            meta = {"fm_version": data.fm_version, "snapshot_id": sid, "created_ms": data.created_ms,
                    "codec": data.codec.params(), "dim": data.dim, "n_users": int(len(data.user_ids)),
                    "n_rows": data.n_rows, "n_ads": int(len(data.ad_ids)), "max_segment": data.max_segment,
                    "state": sorted(state), "event_ids": True, "coverage": data.coverage,
                    "layout": {"user_buckets": self.user_buckets, "ad_buckets": self.ad_buckets}}
            fm_slot = self._client.pipeline(transaction=False)  # state and meta share the {fm} slot: one node
            for name, arr in state.items():
                fm_slot.set(keys.state(sid, name), np.ascontiguousarray(arr, np.float32).tobytes())
            fm_slot.set(keys.meta(sid), json.dumps(meta))  # meta last: its presence means the snapshot is complete
            fm_slot.execute()
            # Flip: current and the snapshot list share the {fm} slot, so one MULTI switches them on one node;
            # readers (on any node's clients) see the old or the new snapshot id, never a mix.
            flip = self._client.pipeline(transaction=True)
            flip.set(keys.current, sid).rpush(keys.snapshots, sid)
            flip.execute()
            self._client.sadd(keys.versions, data.fm_version)  # its own slot; only names versions in error messages
            self._last = data
            self._apply_retention()

    def _apply_retention(self) -> None:
        """Delete snapshots beyond keep_snapshots: meta, then every bucket's check key, then the data (on every
        primary). Readers still on a deleted snapshot find a check key missing, refresh and retry."""
        ids = [s.decode() for s in self._client.lrange(self._keys.snapshots, 0, -1)]
        for sid in ids[: max(0, len(ids) - self.retention.keep_snapshots)]:
            raw_meta = self._client.get(self._keys.meta(sid))
            layout = json.loads(raw_meta).get("layout", {}) if raw_meta else {}
            self._client.delete(self._keys.meta(sid))
            unlink_keys(self._client, BucketKeys(self._keys, sid, int(layout.get("user_buckets", USER_BUCKETS)),
                                                 int(layout.get("ad_buckets", AD_BUCKETS))).all_live())
            for pattern in self._keys.snapshot_patterns(sid):
                batch = []
                for key in scan_keys(self._client, pattern):
                    batch.append(key)
                    if len(batch) >= 20 * _BATCH:
                        unlink_keys(self._client, batch)
                        batch = []
                unlink_keys(self._client, batch)
            self._client.lrem(self._keys.snapshots, 1, sid)

    def close(self) -> None:
        self._client.close()
