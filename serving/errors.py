"""Typed errors of the ranking service, each carrying the gRPC status it maps to.

Handlers raise these with a message that names the field and the limit; the servicer turns them
into `context.abort(code, message)`. Anything else is a bug and surfaces as INTERNAL.
"""

from __future__ import annotations

import grpc


class RankingError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidRequest(RankingError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(RankingError):
    code = grpc.StatusCode.NOT_FOUND


class ModelNotReady(RankingError):
    """The model exists but cannot serve (e.g. its FM embeddings are absent)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Overloaded(RankingError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class BackendUnavailable(RankingError):
    code = grpc.StatusCode.UNAVAILABLE


class ModelLoadError(RankingError):
    """A model version on disk could not be loaded (corrupt file, hash mismatch, bad manifest)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class DataLoss(RankingError):
    """Stored data the request needs is damaged (e.g. an embedding snapshot fails its checksums)."""

    code = grpc.StatusCode.DATA_LOSS
