"""The analysis state replicas share through the registry: window statistics, the rollout, its lease.

Keys (`RolloutRegistry.put_shared`, none audited, none moving traffic):

| key                                    | holds                                                  | expiry          |
|----------------------------------------|--------------------------------------------------------|-----------------|
| `stats:<model>:<canary key>:<replica>` | a replica's cumulative per-arm `ArmStats` (this canary) | 3 × lease, ≥10 s |
| `rollout:<model>`                      | the rollout: spec, analysis state, pause flag, baseline | none            |
| lease `analysis:<model>:<started_ms>`  | the replica deciding for the rollout                    | `lease_s`       |
| `control:<model>:<started_ms>`         | the operator's latest pause / resume of that rollout    | removed at end  |

The canary key is the canary's version and a digest of its salt, so a replica's counts restart whenever
the canary changes. A replica id is host, pid and a random suffix: a restarted replica is a new one, with
fresh counts, never mistaken for a continuation of the old one's.

Exactly one replica decides: the one holding the lease, renewed every poll; it checks the lease again
right before each decision. When it dies the lease expires and the next replica to poll takes the
rollout over from `rollout:<model>`: the same step, the same failed windows, and the baseline of what
was already judged, so the first window it judges is everything since the last decision.

`pause` and `resume` may reach any replica: the one receiving the verb records it under
`control:<model>:<started_ms>` (its own key, so a leader saving the rollout after a decision can never
overwrite it), and the leader applies it at its next poll and again right before each decision.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from serving.rollout.analysis import AnalysisState
from serving.rollout.pooled import ArmStats, Snapshot, snapshot_from_dict, snapshot_to_dict
from serving.rollout.registry import RolloutRegistry
from serving.rollout.spec import RolloutSpec


def new_replica_id() -> str:
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(3)}"


@functools.lru_cache(maxsize=256)
def canary_key(version: int, salt: str) -> str:
    return f"{version}.{hashlib.sha256(salt.encode()).hexdigest()[:12]}"


@dataclass
class RolloutDoc:
    """A rollout as stored for every replica: enough for any of them to continue its analysis."""

    spec: RolloutSpec
    started_ms: int
    state: AnalysisState
    paused: bool = False
    leader: str = ""
    ended: str = ""
    """Set when an operator verb (or a change made elsewhere) ended the rollout: never taken over."""
    baseline: dict[str, dict[str, ArmStats]] = field(default_factory=dict)

    @property
    def lease(self) -> str:
        return f"analysis:{self.spec.model}:{self.started_ms}"

    @property
    def canary(self) -> str:
        return canary_key(self.spec.version, self.spec.canary_salt)

    def to_json(self) -> str:
        s = self.state
        return json.dumps({"spec": self.spec.to_dict(), "started_ms": self.started_ms, "paused": self.paused,
                           "leader": self.leader, "ended": self.ended, "baseline": snapshot_to_dict(self.baseline),
                           "state": {"step": s.step, "failed_windows": s.failed_windows, "windows": s.windows,
                                     "phase": s.phase}}, default=float)

    @classmethod
    def from_json(cls, text: str) -> RolloutDoc:
        d = json.loads(text)
        spec = RolloutSpec.from_dict(d["spec"])
        st = d["state"]
        return cls(spec=spec, started_ms=int(d["started_ms"]), paused=bool(d["paused"]), leader=str(d["leader"]),
                   ended=str(d.get("ended", "")),
                   baseline=snapshot_from_dict(d["baseline"]),
                   state=AnalysisState(spec, step=int(st["step"]), failed_windows=int(st["failed_windows"]),
                                       windows=int(st["windows"]), phase=st["phase"]))


class SharedAnalysis:
    """This replica's side of the shared state in `registry`."""

    def __init__(self, registry: RolloutRegistry, replica: str, lease_s: float) -> None:
        self.registry, self.replica, self.lease_ms = registry, replica, int(lease_s * 1000)
        self.stats_ttl_ms = max(10_000, 3 * self.lease_ms)

    def publish(self, model: str, canary: str, arms: Mapping[str, ArmStats]) -> None:
        value = json.dumps({a: s.to_dict() for a, s in arms.items()})
        self.registry.put_shared(f"stats:{model}:{canary}:{self.replica}", value, self.stats_ttl_ms)

    def snapshot(self, model: str, canary: str) -> Snapshot:
        """Every live replica's published counts for this canary."""
        prefix = f"stats:{model}:{canary}:"
        out = {}
        for key, value in self.registry.get_shared(prefix).items():
            out[key[len(prefix):]] = {a: ArmStats.from_dict(s) for a, s in json.loads(value).items()}
        return out

    def save(self, doc: RolloutDoc) -> None:
        self.registry.put_shared(f"rollout:{doc.spec.model}", doc.to_json())

    def load(self, model: str) -> RolloutDoc | None:
        raw = self.registry.get_shared("rollout:").get(f"rollout:{model}")
        return RolloutDoc.from_json(raw) if raw is not None else None

    def _control_key(self, doc: RolloutDoc) -> str:
        return f"control:{doc.spec.model}:{doc.started_ms}"

    def request_pause(self, doc: RolloutDoc, paused: bool, *, actor: str, reason: str, at_ms: int) -> None:
        """Record an operator's pause (True) or resume (False) of `doc`'s rollout for its leader to apply."""
        self.registry.put_shared(self._control_key(doc), json.dumps(
            {"paused": paused, "actor": actor, "reason": reason, "at_ms": at_ms, "by": self.replica}))

    def pause_request(self, doc: RolloutDoc) -> dict | None:
        """The latest pause / resume recorded for `doc`'s rollout, or None."""
        key = self._control_key(doc)
        raw = self.registry.get_shared(key.rsplit(":", 1)[0] + ":").get(key)
        return json.loads(raw) if raw is not None else None

    def forget_requests(self, doc: RolloutDoc) -> None:
        self.registry.delete_shared(self._control_key(doc))

    def hold(self, doc: RolloutDoc) -> bool:
        """Take or renew the rollout's lease; True while this replica leads it."""
        return self.registry.acquire_lease(doc.lease, self.replica, self.lease_ms)

    def release(self, doc: RolloutDoc) -> None:
        self.registry.release_lease(doc.lease, self.replica)
