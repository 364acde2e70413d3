"""Typed errors of the embedding cache.

The ranking service maps each type to one gRPC status, so every failure mode gets its own class
instead of a generic error (see docs/cache.md, "Errors"):

| error                    | gRPC status          | meaning                                              |
|--------------------------|----------------------|------------------------------------------------------|
| InvalidLookupError       | INVALID_ARGUMENT     | bad ids, L out of range, too many ads, bad shapes    |
| FmVersionMismatchError   | FAILED_PRECONDITION  | the store has no embeddings for the requested fm_version |
| SnapshotNotFoundError    | NOT_FOUND            | fm_version known but no (such) published snapshot    |
| CorruptSnapshotError     | DATA_LOSS / INTERNAL | sizes or checksums do not match the manifest         |
| CacheUnavailableError    | UNAVAILABLE          | the backend (Redis) cannot be reached                |
"""

from __future__ import annotations


class CacheError(Exception):
    """Base class of every error the embedding cache raises on purpose."""


class InvalidLookupError(CacheError, ValueError):
    """The caller passed arguments the cache refuses (the message names the field and the limit)."""


class FmVersionMismatchError(CacheError):
    """A reader asked for an fm_version the store does not hold, or a snapshot belongs to another version."""


class SnapshotNotFoundError(CacheError):
    """The fm_version exists but has no published snapshot, or the requested snapshot id is absent."""


class CorruptSnapshotError(CacheError):
    """A snapshot's files do not match its manifest (truncated, altered, or the manifest itself is unreadable)."""


class CacheUnavailableError(CacheError):
    """The backend could not be reached (Redis down, connection refused, timeout)."""
