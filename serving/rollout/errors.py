"""Typed errors of the rollout machinery, each carrying the gRPC status the admin service will answer with.

They extend `serving.errors.RankingError`, so a servicer that already maps `exc.code` to
`context.abort(code, message)` needs nothing new. Every message names the model, the version and the
field or limit that decided, because an operator reads it in a terminal during an incident.
"""

from __future__ import annotations

import grpc

from serving.errors import RankingError


class RolloutError(RankingError):
    """Base class of every error the rollout package raises on purpose."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class IllegalTransition(RolloutError):
    """A state change the transition table does not allow (e.g. retired → canary)."""

    def __init__(self, model: str, version: int, from_state: str | None, to_state: str, allowed: tuple[str, ...]):
        shown = ", ".join(allowed) or "nothing"
        source = from_state or "unregistered"
        super().__init__(f"{model}/{version}: cannot go from {source} to {to_state} (allowed from {source}: {shown})")
        self.model, self.version, self.from_state, self.to_state = model, version, from_state, to_state


class StateConflict(RolloutError):
    """The change would break a per-model invariant: at most one live, one canary and one shadow version."""


class UnknownVersion(RolloutError):
    """The registry holds no such model or version."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyRegistered(RolloutError):
    """Versions are immutable: registering the same (model, version) twice with other facts is refused."""

    code = grpc.StatusCode.ALREADY_EXISTS


class PreflightRefused(RolloutError):
    """A candidate version failed a preflight check; `failures` holds every failed check, not just the first."""

    def __init__(self, model: str, version: int, failures: tuple[str, ...]):
        super().__init__(f"{model}/{version} refused by preflight: " + "; ".join(failures))
        self.model, self.version, self.failures = model, version, failures


class SpecError(RolloutError):
    """A rollout spec field outside what it allows; `field` is its dotted name (e.g. `checks.max_psi`)."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.reason = field, message


class RoutingError(RolloutError):
    """A routing table that cannot be served (a weight outside 0..100, a canary equal to live, …)."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.reason = field, message


class RegistryPathError(RolloutError):
    """The registry file would fall outside its state folder."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class RegistryUnavailable(RolloutError):
    """The shared registry (Redis) cannot be reached; replicas keep routing by the last tables they read."""

    code = grpc.StatusCode.UNAVAILABLE


class LeaseLost(StateConflict):
    """A fenced write (the analysis's decision) whose lease another replica holds now, or that expired:
    refused inside the registry's transaction, so a stalled leader can never apply a late decision."""
