"""Typed errors of the ranking service, each carrying the gRPC status it maps to.

Stages raise these with a message that names the field and the limit, or the dependency and what it
answered; `grpc_status` is the one place an exception becomes a status code and a message. Errors of
other layers are translated into these where they are caught: cache errors in
`serving.history.lookup_error` / `open_error`, Triton's in `serving.backends.triton.map_triton_error`,
onnxruntime's in `serving.backends.embedded.map_onnxruntime_error`. Anything else is a bug and
surfaces as INTERNAL, logged with its traceback by the servicer.

| error               | status              | raised when                                                |
|---------------------|---------------------|------------------------------------------------------------|
| InvalidRequest      | INVALID_ARGUMENT    | a field breaks a limit; undecodable bytes; the cache or     |
|                     |                     | backend refuses the inputs                                 |
| ModelNotFound       | NOT_FOUND           | no such model or version (or Triton no longer knows it)    |
| ModelNotReady       | FAILED_PRECONDITION | the version exists but cannot serve (FM codes absent, wrong |
|                     |                     | codec or width, Triton version not at ready state)         |
| ModelLoadError      | FAILED_PRECONDITION | a version on disk could not be loaded                      |
| Overloaded          | RESOURCE_EXHAUSTED  | admission control refuses a request (too many in flight,   |
|                     |                     | queue full or queued too long; carries a retry hint)       |
| DeadlineExpired     | DEADLINE_EXCEEDED   | the call's deadline (capped by max_deadline_ms) passed at  |
|                     |                     | a stage boundary; nothing after that boundary runs         |
| BackendUnavailable  | UNAVAILABLE         | the cache or Triton cannot be reached; a snapshot vanished |
| BackendTimeout      | DEADLINE_EXCEEDED   | the cache or Triton did not answer within its timeout      |
| DataLoss            | DATA_LOSS           | a snapshot fails its checksums                             |
| InferenceFailed     | INTERNAL            | the model ran and failed (onnxruntime or Triton error)     |
"""

from __future__ import annotations

import grpc

INTERNAL_MESSAGE = "internal error while scoring; see server log"


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
    """The server is at capacity; the caller should back off for `retry_after_ms` and retry. Raised by
    the admission policy (`serving.pipeline.admission.ConcurrencyLimit`) before any stage runs, so a
    refused call cost the server nothing but the refusal."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, *, retry_after_ms: int = 0) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class DeadlineExpired(RankingError):
    """The call's deadline passed before the named stage could start; the request is dropped there
    (never scored), because an answer after the deadline is one the caller no longer reads."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED

    def __init__(self, stage: str, late_ms: float) -> None:
        super().__init__(f"deadline passed {late_ms:.1f} ms before stage {stage!r}; the request was not scored")
        self.stage = stage


class BackendUnavailable(RankingError):
    code = grpc.StatusCode.UNAVAILABLE


class BackendTimeout(BackendUnavailable):
    """A dependency (cache, Triton) did not answer in time. A kind of unavailability, so code that
    handles BackendUnavailable (retries, future fallbacks) handles it too; its status says "too slow"."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class ModelLoadError(RankingError):
    """A model version on disk could not be loaded (corrupt file, hash mismatch, bad manifest)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class DataLoss(RankingError):
    """Stored data the request needs is damaged (e.g. an embedding snapshot fails its checksums)."""

    code = grpc.StatusCode.DATA_LOSS


class InferenceFailed(RankingError):
    """The model was found and ran, and the runtime reported an error: a server-side fault, but one
    whose message names the model version and what the runtime said."""

    code = grpc.StatusCode.INTERNAL


def grpc_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and message a failed call returns: a typed error's own code and message; anything
    else INTERNAL with a fixed message (its details belong in the server log, not on the wire).

    >>> grpc_status(InvalidRequest("top_k: must be >= 1 when set, got 0"))
    (<StatusCode.INVALID_ARGUMENT: (3, 'invalid argument')>, 'top_k: must be >= 1 when set, got 0')
    """
    if isinstance(exc, RankingError):
        return exc.code, str(exc) or type(exc).__name__
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
