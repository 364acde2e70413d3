"""The lifecycle of a model version and the one table that says which moves are legal.

A version enters as `staged` (exported and registered, no traffic). It may be `shadow` (scores a sample of
live requests off the response path), `canary` (takes a sticky share of users), `live` (takes the rest),
then `retired` when another version is promoted over it. `rolled_back` marks a version that analysis or
an operator took out of traffic because it misbehaved; it is kept (versions are immutable) so the audit
log can always point at it.

The table is explicit rather than implied by code paths so that the docs, the registry and the admin API
agree, and a test can print it. Per-model invariants (one live, one canary, one shadow at a time) are
checked by the registry, which sees every version of a model.
"""

from __future__ import annotations

from enum import StrEnum

from serving.rollout.errors import IllegalTransition


class VersionState(StrEnum):
    STAGED = "staged"
    SHADOW = "shadow"
    CANARY = "canary"
    LIVE = "live"
    RETIRED = "retired"
    ROLLED_BACK = "rolled_back"


S = VersionState

TRANSITIONS: dict[VersionState, frozenset[VersionState]] = {
    # the first version of a model goes staged → live directly (there is nothing to compare it with)
    S.STAGED: frozenset({S.SHADOW, S.CANARY, S.LIVE, S.RETIRED}),
    S.SHADOW: frozenset({S.CANARY, S.STAGED, S.RETIRED, S.ROLLED_BACK}),
    S.CANARY: frozenset({S.LIVE, S.ROLLED_BACK}),
    # live → rolled_back restores the version that was live before it (KServe's "last revision at 100%")
    S.LIVE: frozenset({S.RETIRED, S.ROLLED_BACK}),
    # retired → live is that restoration; retired → staged starts a new rollout of an old version
    S.RETIRED: frozenset({S.LIVE, S.STAGED}),
    S.ROLLED_BACK: frozenset({S.STAGED, S.RETIRED}),
}

TRAFFIC_STATES: frozenset[VersionState] = frozenset({S.SHADOW, S.CANARY, S.LIVE})
"""States that a route points at; a version in one of them must stay loaded."""

SINGLE_PER_MODEL: frozenset[VersionState] = TRAFFIC_STATES
"""At most one version of a model may be in each of these states at a time."""


def check_transition(model: str, version: int, from_state: VersionState | str | None,
                     to_state: VersionState | str) -> VersionState:
    """The target state if `from_state → to_state` is in the table; IllegalTransition naming both otherwise.

    >>> check_transition("vm", 2, "canary", "live")
    <VersionState.LIVE: 'live'>
    """
    try:
        target = VersionState(to_state)
    except ValueError:
        raise IllegalTransition(model, version, str(from_state) if from_state else None, str(to_state),
                                tuple(sorted(s.value for s in VersionState))) from None
    if from_state is None:
        if target is not S.STAGED:
            raise IllegalTransition(model, version, None, target.value, (S.STAGED.value,))
        return target
    source = VersionState(from_state)
    allowed = TRANSITIONS[source]
    if target not in allowed:
        raise IllegalTransition(model, version, source.value, target.value, tuple(sorted(s.value for s in allowed)))
    return target
