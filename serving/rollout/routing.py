"""Which version answers a request: a routing table per model and a pure, sticky choice.

A table names the live version, an optional canary with a weight (percent of users) and an optional
shadow with a sample rate (share of live requests also scored by the shadow, off the response path).

Assignment is by a hash of (salt, user_id) into 10,000 buckets: the canary takes the buckets below
`weight × 100`. Because the cut only moves up as the weight steps up, a user in the canary at 10% is still
in it at 50% (sticky in both directions: no user flips back and forth during a rollout), and every
replica computes the same arm without talking to the others. The hash is BLAKE2b over UTF-8 text, so it
is stable across processes, machines and Python versions (built-in `hash()` is salted per process).
A new salt per rollout gives each rollout a fresh, independent set of canary users.

Usage::

    table = RoutingTable(model="vm", live=3, canary=CanaryRoute(version=4, weight=10, salt="vm/4"))
    version, arm = choose(table, user_id=42, pinned_version=None)     # (3, "live") or (4, "canary")
    shadow = shadow_version(table, arm, request_key="req-17")         # None unless a shadow samples it
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple

from serving.rollout.errors import RoutingError

BUCKETS = 10_000
"""Hash buckets per salt: weights are honoured to 0.01 percentage points."""

Arm = Literal["live", "canary", "pinned"]
ARMS: tuple[Arm, ...] = ("live", "canary", "pinned")


def _check_version(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RoutingError(field, f"must be a positive int version, got {value!r}")
    return value


def _check_salt(field: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > 256:
        raise RoutingError(field, f"must be a non-empty string of at most 256 characters, got {value!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class CanaryRoute:
    """The version under test and the percent of users (0..100) it takes; `salt` names the rollout."""

    version: int
    weight: float
    salt: str

    def __post_init__(self) -> None:
        _check_version("canary.version", self.version)
        _check_salt("canary.salt", self.salt)
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, int | float) or not 0 <= w <= 100:  # NaN fails too
            raise RoutingError("canary.weight", f"must be a percentage within 0..100, got {w!r}")


@dataclass(frozen=True, kw_only=True)
class ShadowRoute:
    """A version that also scores `sample_rate` (0..1) of live requests; its answers are never returned."""

    version: int
    sample_rate: float
    salt: str

    def __post_init__(self) -> None:
        _check_version("shadow.version", self.version)
        _check_salt("shadow.salt", self.salt)
        r = self.sample_rate
        if isinstance(r, bool) or not isinstance(r, int | float) or not 0 <= r <= 1:
            raise RoutingError("shadow.sample_rate", f"must be within 0..1, got {r!r}")


@dataclass(frozen=True, kw_only=True)
class RoutingTable:
    """One model's routes. `live` takes every request the canary does not; pins bypass the table."""

    model: str
    live: int
    canary: CanaryRoute | None = None
    shadow: ShadowRoute | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise RoutingError("model", f"must be a non-empty model name, got {self.model!r}")
        _check_version("live", self.live)
        if self.canary is not None and self.canary.version == self.live:
            raise RoutingError("canary.version", f"{self.model}: the canary must differ from live version {self.live}")
        if self.shadow is not None and self.shadow.version == self.live:
            raise RoutingError("shadow.version", f"{self.model}: the shadow must differ from live version {self.live}")

    def versions(self) -> frozenset[int]:
        """Every version a route points at: these must stay loaded."""
        out = {self.live}
        out |= {r.version for r in (self.canary, self.shadow) if r is not None}
        return frozenset(out)

    def to_dict(self) -> dict:
        def part(route: CanaryRoute | ShadowRoute | None) -> dict | None:
            return None if route is None else dict(vars(route))
        return {"model": self.model, "live": self.live, "canary": part(self.canary), "shadow": part(self.shadow)}

    @classmethod
    def from_dict(cls, d: Mapping) -> RoutingTable:
        """The inverse of `to_dict`; RoutingError names a missing or mistyped field."""
        try:
            canary = d.get("canary")
            shadow = d.get("shadow")
            return cls(model=d["model"], live=d["live"],
                       canary=None if canary is None else CanaryRoute(**canary),
                       shadow=None if shadow is None else ShadowRoute(**shadow))
        except KeyError as exc:
            raise RoutingError(str(exc.args[0]), "is required") from None
        except TypeError as exc:
            raise RoutingError("routing", str(exc)) from None


class Route(NamedTuple):
    """The version that answers, and the arm it was chosen by (recorded in the response and metrics)."""

    version: int
    arm: Arm


def bucket(key: int | str, salt: str, domain: str = "canary") -> int:
    """A bucket in [0, BUCKETS) for `key` under `salt`; `domain` keeps canary and shadow draws independent.

    >>> bucket(42, "vm/4")
    9650
    """
    digest = hashlib.blake2b(f"{domain}\x1f{salt}\x1f{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def in_canary(user_id: int, canary: CanaryRoute) -> bool:
    """Whether `user_id` is in the canary's share; monotone in the weight for a fixed salt."""
    return bucket(user_id, canary.salt) < round(canary.weight * BUCKETS / 100)


def choose(table: RoutingTable, user_id: int, pinned_version: int | None = None) -> Route:
    """The version for one request. A pin wins (arm "pinned"; whether that version is loaded is the
    backend's NOT_FOUND to raise); otherwise the user's bucket decides between canary and live."""
    if pinned_version is not None:
        return Route(pinned_version, "pinned")
    if table.canary is not None and in_canary(user_id, table.canary):
        return Route(table.canary.version, "canary")
    return Route(table.live, "live")


def shadow_version(table: RoutingTable, arm: Arm, request_key: int | str) -> int | None:
    """The shadow version to score this request with off the response path, or None.

    Only live-arm requests are mirrored: the shadow is compared with live, and pinned or canary requests
    would pair it with something else. Sampling is by request (not user) so that the shadow sees every
    kind of user; it hashes with the shadow's salt, so every replica samples the same requests.
    """
    shadow = table.shadow
    if shadow is None or arm != "live":
        return None
    sampled = bucket(request_key, shadow.salt, "shadow") < round(shadow.sample_rate * BUCKETS)
    return shadow.version if sampled else None


__all__ = ["ARMS", "BUCKETS", "Arm", "CanaryRoute", "Route", "RoutingTable", "ShadowRoute", "bucket", "choose",
           "in_canary", "shadow_version"]
