"""The rollout registry: every version of every model, its state, its manifest facts, and an audit log.

Every replica reads the same registry, so they agree on which version is live, which is canary at what
weight, and which shadows. Backends only supply one primitive, an atomic read-plan-write of one model
(`_transact`); the rules — the transition table, one live / canary / shadow per model, promotion retiring
the old live, rollback restoring it — are planned here once, so an embedded SQLite file and a shared
Redis behave alike. A plan writes the new states and appends its audit entries in the same atomic step,
so state and audit can never diverge.

`change_counter()` increases with every committed change. Replicas poll it (cheap) and rebuild their
routing tables only when it moved; `serving.rollout.watcher.RoutingWatcher` does that.

Usage::

    registry = SqliteRegistry("runs/state")
    registry.register(manifest, actor="ci")                       # staged
    registry.transition("vm", 4, "canary", actor="alice", reason="start rollout")
    registry.set_route("vm", canary_weight=10, actor="analysis", reason="step 1")
    registry.promote("vm", 4, actor="analysis", reason="all checks passed", metrics={"psi": 0.01})
    table = registry.routing("vm")                                 # RoutingTable(live=4, …)
"""

from __future__ import annotations

import abc
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from exporters.manifest import ModelManifest
from serving.rollout.errors import AlreadyRegistered, LeaseLost, StateConflict, UnknownVersion
from serving.rollout.routing import CanaryRoute, RoutingTable, ShadowRoute
from serving.rollout.states import SINGLE_PER_MODEL, VersionState, check_transition

S = VersionState


def spec_hash(feature_spec: Mapping) -> str:
    """sha256 of the feature spec's canonical JSON: equal hashes mean serving builds identical tensors."""
    text = json.dumps(feature_spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class VersionFacts:
    """What the manifest says about a version, kept with its state so decisions never reread disk."""

    fm_version: str
    feature_spec: Mapping
    feature_spec_hash: str
    checksum: str
    metrics: Mapping = field(default_factory=dict)
    parity: Mapping = field(default_factory=dict)
    history: Mapping = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, manifest: ModelManifest) -> VersionFacts:
        return cls(fm_version=manifest.fm_version, feature_spec=dict(manifest.feature_spec),
                   feature_spec_hash=spec_hash(manifest.feature_spec), checksum=manifest.sha256,
                   metrics=dict(manifest.metrics), parity=dict(manifest.parity), history=dict(manifest.history))

    def to_dict(self) -> dict:
        return {"fm_version": self.fm_version, "feature_spec": dict(self.feature_spec),
                "feature_spec_hash": self.feature_spec_hash, "checksum": self.checksum,
                "metrics": dict(self.metrics), "parity": dict(self.parity), "history": dict(self.history)}

    @classmethod
    def from_dict(cls, d: Mapping) -> VersionFacts:
        return cls(fm_version=str(d["fm_version"]), feature_spec=dict(d["feature_spec"]),
                   feature_spec_hash=str(d["feature_spec_hash"]), checksum=str(d["checksum"]),
                   metrics=dict(d.get("metrics", {})), parity=dict(d.get("parity", {})),
                   history=dict(d.get("history", {})))


@dataclass(frozen=True)
class VersionRecord:
    model: str
    version: int
    state: VersionState
    facts: VersionFacts
    registered_ms: int
    updated_ms: int


@dataclass(frozen=True)
class AuditEntry:
    """One committed change: a state transition, or a route change (`from_state == to_state`, `weight` set).
    `seq` orders entries across every model of the registry."""

    seq: int
    model: str
    version: int
    from_state: VersionState | None
    to_state: VersionState
    actor: str
    at_ms: int
    reason: str
    metrics: Mapping = field(default_factory=dict)
    weight: float | None = None


@dataclass(frozen=True)
class RouteSettings:
    """Per-model routing knobs the states do not carry. Each arm has its own salt, fixed when a version
    enters it, so a shadow starting mid-rollout cannot reshuffle the canary's users. `previous_live` is what
    a rollback of live restores."""

    canary_weight: float = 0.0
    shadow_sample_rate: float = 0.0
    canary_salt: str = ""
    shadow_salt: str = ""
    previous_live: int | None = None


@dataclass(frozen=True)
class ModelView:
    """One model as read inside a transaction."""

    model: str
    records: Mapping[int, VersionRecord]
    settings: RouteSettings

    def in_state(self, state: VersionState) -> VersionRecord | None:
        return next((r for r in self.records.values() if r.state is state), None)


@dataclass(frozen=True)
class AuditDraft:
    version: int
    from_state: VersionState | None
    to_state: VersionState
    reason: str
    metrics: Mapping
    weight: float | None = None


@dataclass(frozen=True)
class Plan:
    """What one transaction writes: new states, new route settings, audit entries (seq and time added by
    the backend). `new_record` is set only by `register`."""

    states: Mapping[int, VersionState] = field(default_factory=dict)
    settings: RouteSettings | None = None
    audit: tuple[AuditDraft, ...] = ()
    new_record: VersionFacts | None = None


def _json_safe(metrics: Mapping | None) -> dict:
    """Metrics as plain JSON values (numpy scalars become floats), so every backend stores the same thing."""
    return json.loads(json.dumps(dict(metrics or {}), default=float))


def _record(view: ModelView, version: int) -> VersionRecord:
    rec = view.records.get(version)
    if rec is None:
        raise UnknownVersion(f"{view.model}/{version}: not registered; registered versions {sorted(view.records)}")
    return rec


def plan_transition(view: ModelView, version: int, to_state: VersionState | str, reason: str,
                    metrics: Mapping | None = None, salt: str | None = None) -> Plan:
    """One version's move, checked against the table and the one-per-state invariants. Entering canary or
    shadow fixes that arm's salt (`salt`, default "<model>/<version>") for the rest of the rollout."""
    rec = _record(view, version)
    target = check_transition(view.model, version, rec.state, to_state)
    if target in SINGLE_PER_MODEL:
        holder = view.in_state(target)
        if holder is not None and holder.version != version:
            fix = "promote to replace it" if target is S.LIVE else "roll it back or retire it first"
            raise StateConflict(f"{view.model}/{version}: version {holder.version} is already {target.value}; {fix}")
    settings = view.settings
    if rec.state is S.CANARY:  # leaving canary always takes its traffic away
        settings = replace(settings, canary_weight=0.0)
    if rec.state is S.SHADOW:
        settings = replace(settings, shadow_sample_rate=0.0)
    if target is S.CANARY and rec.state is not S.CANARY:
        settings = replace(settings, canary_salt=salt or f"{view.model}/{version}", canary_weight=0.0)
    if target is S.SHADOW and rec.state is not S.SHADOW:
        settings = replace(settings, shadow_salt=salt or f"{view.model}/{version}", shadow_sample_rate=0.0)
    return Plan(states={version: target}, settings=settings,
                audit=(AuditDraft(version, rec.state, target, reason, _json_safe(metrics)),))


def plan_promote(view: ModelView, version: int, reason: str, metrics: Mapping | None = None) -> Plan:
    """`version` → live and the old live → retired, in one step (no instant with two or zero live)."""
    rec = _record(view, version)
    check_transition(view.model, version, rec.state, S.LIVE)
    old = view.in_state(S.LIVE)
    drafts, states = [], {}
    settings = view.settings
    m = _json_safe(metrics)
    if old is not None and old.version != version:
        states[old.version] = S.RETIRED
        drafts.append(AuditDraft(old.version, S.LIVE, S.RETIRED, f"replaced by {version}: {reason}", m))
        settings = replace(settings, previous_live=old.version)
    if rec.state is S.CANARY:
        settings = replace(settings, canary_weight=0.0)
    if rec.state is S.SHADOW:
        settings = replace(settings, shadow_sample_rate=0.0)
    states[version] = S.LIVE
    drafts.append(AuditDraft(version, rec.state, S.LIVE, reason, m))
    return Plan(states=states, settings=settings, audit=tuple(drafts))


def plan_rollback(view: ModelView, version: int, reason: str, metrics: Mapping | None = None) -> Plan:
    """Take `version` out of traffic. Rolling back the live version restores `previous_live` (retired → live)
    in the same step; with nothing to restore it is refused, since the model would have no live version."""
    rec = _record(view, version)
    check_transition(view.model, version, rec.state, S.ROLLED_BACK)
    m = _json_safe(metrics)
    if rec.state is not S.LIVE:
        return plan_transition(view, version, S.ROLLED_BACK, reason, m)
    prev = view.settings.previous_live
    restore = view.records.get(prev) if prev is not None else None
    if restore is None or restore.state is not S.RETIRED:
        raise StateConflict(f"{view.model}/{version}: no retired previous live version to restore "
                            f"(previous_live={prev}); promote another version instead")
    return Plan(states={version: S.ROLLED_BACK, restore.version: S.LIVE},
                settings=replace(view.settings, previous_live=None),
                audit=(AuditDraft(version, S.LIVE, S.ROLLED_BACK, reason, m),
                       AuditDraft(restore.version, S.RETIRED, S.LIVE, f"restored by rollback of {version}: {reason}",
                                  m)))


def plan_route(view: ModelView, *, canary_weight: float | None, shadow_sample_rate: float | None,
               reason: str, metrics: Mapping | None = None) -> Plan:
    """A weight step or sample-rate change, audited against the version it concerns. Salts cannot change
    here: a new salt mid-rollout would move users between arms."""
    settings = view.settings
    drafts = []
    m = _json_safe(metrics)
    if canary_weight is not None:
        canary = view.in_state(S.CANARY)
        if canary is None:
            raise StateConflict(f"{view.model}: no canary version to give weight {canary_weight} to")
        CanaryRoute(version=canary.version, weight=canary_weight, salt=settings.canary_salt or "-")  # validates
        settings = replace(settings, canary_weight=float(canary_weight))
        drafts.append(AuditDraft(canary.version, S.CANARY, S.CANARY, reason, m, float(canary_weight)))
    if shadow_sample_rate is not None:
        shadow = view.in_state(S.SHADOW)
        if shadow is None:
            raise StateConflict(f"{view.model}: no shadow version to sample {shadow_sample_rate} of traffic")
        ShadowRoute(version=shadow.version, sample_rate=shadow_sample_rate, salt=settings.shadow_salt or "-")
        settings = replace(settings, shadow_sample_rate=float(shadow_sample_rate))
        drafts.append(AuditDraft(shadow.version, S.SHADOW, S.SHADOW, reason, m, float(shadow_sample_rate)))
    return Plan(settings=settings, audit=tuple(drafts))


def _expecting(view: ModelView, version: int, expect: VersionState | None) -> ModelView:
    if expect is not None:
        state = _record(view, version).state
        if state is not expect:
            raise StateConflict(f"{view.model}/{version}: is {state.value}, not {expect.value}; the change was "
                                "decided for a state that has moved on")
    return view


def routing_from_view(view: ModelView) -> RoutingTable | None:
    """The table every replica serves for this model; None while it has no live version."""
    live = view.in_state(S.LIVE)
    if live is None:
        return None
    s = view.settings
    canary, shadow = view.in_state(S.CANARY), view.in_state(S.SHADOW)
    return RoutingTable(
        model=view.model, live=live.version,
        canary=None if canary is None else CanaryRoute(
            version=canary.version, weight=s.canary_weight, salt=s.canary_salt or f"{view.model}/{canary.version}"),
        shadow=None if shadow is None else ShadowRoute(
            version=shadow.version, sample_rate=s.shadow_sample_rate,
            salt=s.shadow_salt or f"{view.model}/{shadow.version}"))


@dataclass(frozen=True)
class Fence:
    """A write made on behalf of a lease: `holder` must hold lease `name` (unexpired) when it commits."""

    name: str
    holder: str

    def refused(self, model: str, held_by: str | None) -> LeaseLost:
        who = f"is held by {held_by}" if held_by else "has expired"
        return LeaseLost(f"{model}: lease {self.name} {who}, not {self.holder}'s: the decision was not applied")


class RolloutRegistry(abc.ABC):
    """The registry contract. Subclasses implement storage (`_transact`, `_view`, `audit`, `models`,
    `change_counter`); every rule lives in the planning functions above."""

    def __init__(self, clock_ms: Callable[[], int] | None = None) -> None:
        self._clock_ms = clock_ms or (lambda: int(time.time() * 1000))

    # -- storage primitives ------------------------------------------------------------------------------
    @abc.abstractmethod
    def _transact(self, model: str, plan: Callable[[ModelView], Plan], actor: str,
                  fence: Fence | None = None) -> list[AuditEntry]:
        """Atomically: read `model`, call `plan` on it, write its states, settings and audit entries, bump
        the change counter. Concurrent writers must serialise (or retry) so the plan saw the latest state.
        With `fence`, the lease must be `fence.holder`'s and unexpired at the commit (else `LeaseLost`,
        nothing written): the lease check and the write are one transaction."""

    @abc.abstractmethod
    def _view(self, model: str) -> ModelView:
        """A consistent read of one model."""

    @abc.abstractmethod
    def models(self) -> list[str]:
        """Every model with a registered version, sorted."""

    @abc.abstractmethod
    def audit(self, model: str | None = None, version: int | None = None, since_seq: int = 0) -> list[AuditEntry]:
        """Audit entries with seq > `since_seq`, oldest first, optionally for one model / version."""

    @abc.abstractmethod
    def change_counter(self) -> int:
        """Grows with every committed change anywhere in the registry; cheap enough to poll every second."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    # -- shared analysis state (not audited, no change-counter bump: nothing here moves traffic) ---------
    @abc.abstractmethod
    def put_shared(self, key: str, value: str, ttl_ms: int | None = None) -> None:
        """Store `value` under `key`, expiring after `ttl_ms` (None: kept until overwritten or deleted).
        Replicas publish their window statistics here, and the analysis its rollout state."""

    @abc.abstractmethod
    def get_shared(self, prefix: str) -> dict[str, str]:
        """Every unexpired key of the group `prefix` (the keys' text up to and including their last ':'),
        with its value."""

    @abc.abstractmethod
    def delete_shared(self, key: str) -> None:
        """Forget `key` (absent is fine)."""

    @abc.abstractmethod
    def acquire_lease(self, name: str, holder: str, ttl_ms: int) -> bool:
        """Take lease `name` for `ttl_ms` if it is free, expired or already `holder`'s (a renewal); True
        when `holder` holds it now. Atomic: of replicas racing for a free lease exactly one wins."""

    @abc.abstractmethod
    def release_lease(self, name: str, holder: str) -> None:
        """Give lease `name` up if `holder` holds it, so a successor need not wait for its expiry."""

    # -- operations ----------------------------------------------------------------------------------------
    def register(self, manifest: ModelManifest, *, actor: str, reason: str = "exported") -> VersionRecord:
        """Record a new version as staged. Registering the same version again with the same checksum is a
        no-op (exporters and replicas may race); with another checksum it is AlreadyRegistered."""
        facts = VersionFacts.from_manifest(manifest)

        def plan(view: ModelView) -> Plan:
            existing = view.records.get(manifest.version)
            if existing is not None:
                if existing.facts.checksum != facts.checksum:
                    raise AlreadyRegistered(f"{manifest.name}/{manifest.version}: already registered with checksum "
                                            f"{existing.facts.checksum[:12]}…, not {facts.checksum[:12]}…")
                return Plan()
            return Plan(states={manifest.version: S.STAGED}, new_record=facts,
                        audit=(AuditDraft(manifest.version, None, S.STAGED, reason, {}),))

        self._transact(manifest.name, plan, actor)
        return self.get(manifest.name, manifest.version)

    def transition(self, model: str, version: int, to_state: VersionState | str, *, actor: str, reason: str,
                   metrics: Mapping | None = None, salt: str | None = None) -> list[AuditEntry]:
        """One move from the transition table (IllegalTransition / StateConflict otherwise); `salt` fixes
        the arm's salt when entering canary or shadow."""
        return self._transact(model, lambda v: plan_transition(v, version, to_state, reason, metrics, salt), actor)

    def promote(self, model: str, version: int, *, actor: str, reason: str,
                metrics: Mapping | None = None, expect: VersionState | None = None,
                fence: Fence | None = None) -> list[AuditEntry]:
        """Make `version` live and retire the previous live version, in one transaction. `expect`: refuse
        (StateConflict) unless the version is in that state when the transaction reads it; `fence`: refuse
        (LeaseLost) unless that lease is still the writer's."""
        return self._transact(model, lambda v: plan_promote(_expecting(v, version, expect), version, reason,
                                                            metrics), actor, fence)

    def rollback(self, model: str, version: int, *, actor: str, reason: str,
                 metrics: Mapping | None = None, expect: VersionState | None = None,
                 fence: Fence | None = None) -> list[AuditEntry]:
        """Take `version` out of traffic (restoring the previous live one if `version` is live). `expect`
        as for `promote`: the analysis passes canary, so a decision that arrives after the canary left
        (through an operator or another replica) can never roll back what is live now; `fence` likewise."""
        return self._transact(model, lambda v: plan_rollback(_expecting(v, version, expect), version, reason,
                                                             metrics), actor, fence)

    def set_route(self, model: str, *, actor: str, reason: str, canary_weight: float | None = None,
                  shadow_sample_rate: float | None = None, metrics: Mapping | None = None,
                  fence: Fence | None = None) -> list[AuditEntry]:
        """Step the canary weight or change the shadow's sample rate; audited. `fence` as for `promote`:
        the analysis's weight steps are fenced by its lease, so a leader that stalled past its lease
        cannot step a canary its successor now decides for."""
        return self._transact(model, lambda v: plan_route(v, canary_weight=canary_weight,
                                                          shadow_sample_rate=shadow_sample_rate,
                                                          reason=reason, metrics=metrics), actor, fence)

    # -- reads ---------------------------------------------------------------------------------------------
    def get(self, model: str, version: int) -> VersionRecord:
        return _record(self._view(model), version)

    def versions(self, model: str) -> list[VersionRecord]:
        """Every registered version of `model`, ascending."""
        view = self._view(model)
        return [view.records[v] for v in sorted(view.records)]

    def route_settings(self, model: str) -> RouteSettings:
        return self._view(model).settings

    def routing(self, model: str) -> RoutingTable | None:
        """The routing table of `model`, or None while it has no live version."""
        return routing_from_view(self._view(model))

    def routing_tables(self) -> dict[str, RoutingTable]:
        """Every model that has a live version, by name."""
        out = {}
        for name in self.models():
            table = self.routing(name)
            if table is not None:
                out[name] = table
        return out
