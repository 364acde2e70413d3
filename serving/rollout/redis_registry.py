"""The shared registry for replicas on several hosts: the same rules as the SQLite one, kept in Redis.

Each change is one optimistic transaction: WATCH the model's hash and the audit sequence, read, plan (the
planning functions of `registry`), then MULTI/EXEC the new states, settings, audit entries and counter
bump together. A concurrent writer makes EXEC fail and the change is re-planned from the new state, so no
plan ever applies to a stale view, and state and audit are written in one step or not at all. Watching
the audit sequence serialises writers across models too; at control-plane rates (a few changes a
minute) that costs nothing and keeps `seq` a single total order, as in SQLite.

Keys, under `prefix` (default "adrank:rollout:"):

| key              | type   | holds                                                        |
|------------------|--------|--------------------------------------------------------------|
| `counter`        | string | change counter replicas poll                                 |
| `models`         | set    | model names                                                  |
| `model:<name>`   | hash   | `v:<version>` → record JSON; `settings` → route settings JSON |
| `audit`          | list   | audit entries as JSON, in seq order                           |
| `audit_seq`      | string | the last audit seq                                           |
| `shared:<key>`   | string | analysis state: replicas' window statistics (with a TTL), rollout state |
| `shared_index:<group>` | set | the keys of one group (a key up to its last ':'), so reads never SCAN |
| `lease:<name>`   | string | the replica holding an analysis lease (with a TTL)           |

Redis cannot refuse a rewrite of the audit list the way SQLite's triggers do; give the registry's Redis
user ACLs that allow only the commands used here (WATCH, MULTI, EXEC, HGETALL, HSET, SADD, SMEMBERS,
RPUSH, LRANGE, GET, SET, INCR, and for the shared analysis state SREM, MGET, DEL, EVALSHA/EVAL).

    registry = RedisRegistry("redis://:PASSWORD@adrank-redis:6379/1")
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict

import redis

from serving.rollout.errors import RegistryUnavailable
from serving.rollout.registry import (
    AuditEntry,
    Fence,
    ModelView,
    Plan,
    RolloutRegistry,
    RouteSettings,
    VersionFacts,
    VersionRecord,
)
from serving.rollout.states import VersionState

DEFAULT_PREFIX = "adrank:rollout:"
MAX_RETRIES = 50
_ACQUIRE = """
local v = redis.call('GET', KEYS[1])
if (not v) or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _entry_json(e: AuditEntry) -> str:
    return json.dumps({"seq": e.seq, "model": e.model, "version": e.version,
                       "from_state": e.from_state.value if e.from_state else None, "to_state": e.to_state.value,
                       "actor": e.actor, "at_ms": e.at_ms, "reason": e.reason, "metrics": dict(e.metrics),
                       "weight": e.weight}, default=float)


def _entry(d: dict) -> AuditEntry:
    return AuditEntry(int(d["seq"]), d["model"], int(d["version"]),
                      VersionState(d["from_state"]) if d["from_state"] else None, VersionState(d["to_state"]),
                      d["actor"], int(d["at_ms"]), d["reason"], d["metrics"], d["weight"])


class RedisRegistry(RolloutRegistry):
    """The registry in the Redis database at `url` (redis://, rediss:// or unix://)."""

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, socket_timeout_s: float = 2.0,
                 clock_ms: Callable[[], int] | None = None) -> None:
        super().__init__(clock_ms)
        self._client = redis.Redis.from_url(url, socket_timeout=socket_timeout_s,
                                            socket_connect_timeout=socket_timeout_s, decode_responses=True)
        self._p = prefix
        self._acquire = self._client.register_script(_ACQUIRE)
        self._release = self._client.register_script(_RELEASE)

    def close(self) -> None:
        self._client.close()

    def _key(self, name: str) -> str:
        return self._p + name

    @staticmethod
    def _parse(model: str, raw: dict[str, str]) -> ModelView:
        records = {}
        for k, v in raw.items():
            if k.startswith("v:"):
                d = json.loads(v)
                version = int(k[2:])
                records[version] = VersionRecord(model, version, VersionState(d["state"]),
                                                 VersionFacts.from_dict(d["facts"]), int(d["registered_ms"]),
                                                 int(d["updated_ms"]))
        settings = RouteSettings(**json.loads(raw["settings"])) if "settings" in raw else RouteSettings()
        return ModelView(model, records, settings)

    def _view(self, model: str) -> ModelView:
        try:
            return self._parse(model, self._client.hgetall(self._key(f"model:{model}")))
        except redis.exceptions.RedisError as exc:
            raise RegistryUnavailable(f"rollout registry unreachable: {exc}") from exc

    def _transact(self, model: str, plan: Callable[[ModelView], Plan], actor: str,
                  fence: Fence | None = None) -> list[AuditEntry]:
        if not actor:
            raise ValueError("actor: every change must name who made it")
        mkey, seq_key = self._key(f"model:{model}"), self._key("audit_seq")
        lease_key = self._key(f"lease:{fence.name}") if fence is not None else None
        try:
            with self._client.pipeline() as pipe:
                for _ in range(MAX_RETRIES):
                    try:
                        # A fenced write also WATCHes the lease: a takeover, a release or (Redis >= 6.0.9)
                        # its expiry between this read and EXEC aborts the transaction, re-read below.
                        pipe.watch(mkey, seq_key, *([lease_key] if lease_key else []))
                        if fence is not None:
                            holder = pipe.get(lease_key)
                            if holder != fence.holder:
                                pipe.unwatch()
                                raise fence.refused(model, holder)
                        view = self._parse(model, pipe.hgetall(mkey))
                        p = plan(view)
                        if not p.states and not p.audit and p.settings is None:
                            pipe.unwatch()
                            return []
                        seq = int(pipe.get(seq_key) or 0)
                        entries = self._write(pipe, model, view, p, actor, seq)
                        pipe.execute()
                        return entries
                    except redis.exceptions.WatchError:
                        continue  # another writer committed first: plan again from its result
        except redis.exceptions.RedisError as exc:
            raise RegistryUnavailable(f"rollout registry unreachable: {exc}") from exc
        raise RegistryUnavailable(f"{model}: gave up after {MAX_RETRIES} conflicting concurrent changes")

    def _write(self, pipe: redis.client.Pipeline, model: str, view: ModelView, p: Plan, actor: str,
               seq: int) -> list[AuditEntry]:
        now = self._clock_ms()
        pipe.multi()
        mkey = self._key(f"model:{model}")
        for version, state in p.states.items():
            old = view.records.get(version)
            facts = p.new_record if p.new_record is not None else old.facts  # type: ignore[union-attr]
            registered = now if old is None else old.registered_ms
            pipe.hset(mkey, f"v:{version}", json.dumps({"state": state.value, "facts": facts.to_dict(),
                                                        "registered_ms": registered, "updated_ms": now},
                                                       default=float))
        if p.settings is not None:
            pipe.hset(mkey, "settings", json.dumps(asdict(p.settings)))
        pipe.sadd(self._key("models"), model)
        entries = []
        for d in p.audit:
            seq += 1
            entries.append(AuditEntry(seq, model, d.version, d.from_state, d.to_state, actor, now, d.reason,
                                      dict(d.metrics), d.weight))
        if entries:
            pipe.rpush(self._key("audit"), *(_entry_json(e) for e in entries))
            pipe.set(self._key("audit_seq"), seq)
        pipe.incr(self._key("counter"))
        return entries

    def models(self) -> list[str]:
        try:
            return sorted(self._client.smembers(self._key("models")))
        except redis.exceptions.RedisError as exc:
            raise RegistryUnavailable(f"rollout registry unreachable: {exc}") from exc

    def audit(self, model: str | None = None, version: int | None = None, since_seq: int = 0) -> list[AuditEntry]:
        try:
            raw = self._client.lrange(self._key("audit"), 0, -1)
        except redis.exceptions.RedisError as exc:
            raise RegistryUnavailable(f"rollout registry unreachable: {exc}") from exc
        out = [_entry(json.loads(r)) for r in raw]
        return [e for e in out if e.seq > since_seq and (model is None or e.model == model)
                and (version is None or e.version == version)]

    def change_counter(self) -> int:
        try:
            return int(self._client.get(self._key("counter")) or 0)
        except redis.exceptions.RedisError as exc:
            raise RegistryUnavailable(f"rollout registry unreachable: {exc}") from exc

    # -- shared analysis state: Redis expires the keys itself ------------------------------------------------
    def _call(self, fn: Callable, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except redis.exceptions.RedisError as exc:
            raise RegistryUnavailable(f"rollout registry unreachable: {exc}") from exc

    # Keys are found through an index set per group (the key up to its last ':'), never by SCAN: the
    # registry's database may hold many other keys, and every replica reads a group every poll.
    def _index(self, key: str) -> str:
        return self._key("shared_index:" + key[: key.rfind(":") + 1])

    def put_shared(self, key: str, value: str, ttl_ms: int | None = None) -> None:
        def write() -> None:
            with self._client.pipeline(transaction=False) as pipe:
                pipe.set(self._key(f"shared:{key}"), value, px=None if ttl_ms is None else int(ttl_ms))
                pipe.sadd(self._index(key), key)
                pipe.execute()

        self._call(write)

    def get_shared(self, prefix: str) -> dict[str, str]:
        """`prefix` must be a group: everything up to and including the last ':' of the keys wanted."""
        if not prefix.endswith(":"):
            raise ValueError(f"prefix: must end with ':' (a key group), got {prefix!r}")
        index = self._index(prefix)
        keys = sorted(self._call(self._client.smembers, index))
        if not keys:
            return {}
        values = self._call(self._client.mget, [self._key(f"shared:{k}") for k in keys])
        gone = [k for k, v in zip(keys, values, strict=True) if v is None]
        if gone:  # expired (a replica that stopped publishing): drop from the index
            self._call(self._client.srem, index, *gone)
        return {k: v for k, v in zip(keys, values, strict=True) if v is not None}

    def delete_shared(self, key: str) -> None:
        self._call(self._client.delete, self._key(f"shared:{key}"))
        self._call(self._client.srem, self._index(key), key)

    def acquire_lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        return bool(self._call(self._acquire, keys=[self._key(f"lease:{name}")], args=[holder, int(ttl_ms)]))

    def release_lease(self, name: str, holder: str) -> None:
        self._call(self._release, keys=[self._key(f"lease:{name}")], args=[holder])
