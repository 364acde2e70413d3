"""FM history for LoopFM models at request time, read from the embedding cache.

Each model version names the fm_version it was trained with (manifest); the provider opens one cache
reader per fm_version and never serves a model codes of another version, codec or width. A model whose
codes are absent from the cache is refused at load (FAILED_PRECONDITION) rather than served without
history. On the embedded (and in-memory) store a request is one compiled call
(`embedding_cache.served_history.HistoryLookup`, bound per model version at its first request: the
checks that depend only on the snapshot are made then, and again when a refresh swaps it) that decodes
the codes straight into the model's input; on Redis it is one `CacheReader.lookup` (one MGET). Either
result becomes model inputs through `models.history` (`request_tensors`, `history_tensors`), the
module training uses, so online and offline tensors are built by the same code (the parity test
checks them bit for bit).

No model reads candidate ad codes, so the lookup asks for none (an empty id array costs nothing).

Degraded mode: a lookup that fails because the cache is unreachable or slow (its timeout is the
smaller of `cache_timeout_s` and what is left of the request's deadline), or that a circuit breaker
skips after repeated failures (the breaker guards lookups that can fail that way: Redis, not an
in-process store), is answered with the population prior of the model's fm_version — the
same code a user without history gets — flagged FLAG_HISTORY_CACHE_UNAVAILABLE instead of
FLAG_USER_HISTORY_MISSING, so the two stay apart in responses and metrics. The prior is read when a
reader opens (the history of a cold user) and kept in memory per fm_version, so it is there while
Redis is not. `fallback="fail"` answers UNAVAILABLE instead.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from prometheus_client import CollectorRegistry

from embedding_cache import CacheError
from models.history import FM_HISTORY, history_tensors, mask_rows, request_tensors
from protos.adrank.v1 import ranking_pb2
from serving.backends.base import ModelHandle
from serving.breaker import CircuitBreaker
from serving.errors import BackendTimeout, BackendUnavailable, DataLoss, InvalidRequest, ModelNotReady, RankingError

log = logging.getLogger(__name__)

_NO_ADS = np.zeros(0, np.int64)
_DEGRADED = (ranking_pb2.FLAG_HISTORY_CACHE_UNAVAILABLE,)
_NO_HISTORY = (ranking_pb2.FLAG_USER_HISTORY_MISSING,)
_INT64 = np.dtype(np.int64)  # a dtype object: numpy resolves it faster than the scalar type
_clock_ns = time.perf_counter_ns
_new_tuple = tuple.__new__  # a NamedTuple without its generated __new__ frame (one fewer Python call)
# Every candidate row of a request belongs to its one user: user_index is all zeros. The in-process path
# hands out read-only views of this one array (as it does the mask's rows): an input no request can write,
# so sharing it cannot leak anything between requests, and a consumer that tried to write would fail loudly.
_SHARED_INDEX = 4096  # candidates per request up to which user_index is a shared view (beyond: fresh zeros)
_ZERO_INDEX = np.zeros(_SHARED_INDEX, np.int64)
_ZERO_INDEX.flags.writeable = False
_ZERO_VIEWS: list[np.ndarray | None] = [None] * (_SHARED_INDEX + 1)  # n -> _ZERO_INDEX[:n], made once


def _no_lookup(user_id: int, t_ms: int) -> None:  # noqa: ARG001 - HistoryLookup.fetch's signature
    """The served lookup of a reader that has none: None sends every request down the general path."""


def _zero_index(n: int) -> np.ndarray:
    """user_index of a request with n candidates (see _ZERO_INDEX)."""
    if n > _SHARED_INDEX:
        return np.zeros(n, _INT64)
    view = _ZERO_VIEWS[n] = _ZERO_INDEX[:n]
    return view


def needs_history(handle: ModelHandle) -> bool:
    return any(i.name == FM_HISTORY for i in handle.manifest.inputs)


def timed_out(exc: BaseException) -> bool:
    """Whether a cache error was caused by a timeout (the cache reports slow and unreachable alike as
    CacheUnavailableError, keeping the client library's exception as its cause)."""
    cause: BaseException | None = exc.__cause__
    while cause is not None:
        if isinstance(cause, TimeoutError) or type(cause).__name__ == "TimeoutError":  # builtin or redis-py's
            return True
        cause = cause.__cause__
    return False


def lookup_error(exc: Exception) -> RankingError:
    """Each cache error keeps its meaning on the wire (embedding_cache/errors.py has the table)."""
    from embedding_cache import (
        CacheUnavailableError,
        CorruptSnapshotError,
        FmVersionMismatchError,
        InvalidLookupError,
        SnapshotNotFoundError,
    )

    if isinstance(exc, InvalidLookupError):
        return InvalidRequest(f"embedding cache refused the lookup: {exc}")
    if isinstance(exc, CacheUnavailableError):
        if timed_out(exc):
            return BackendTimeout(f"embedding cache timed out: {exc}")
        return BackendUnavailable(f"embedding cache unavailable: {exc}")
    if isinstance(exc, SnapshotNotFoundError):  # deleted under the reader; the next refresh repairs it
        return BackendUnavailable(f"embedding cache snapshot gone, retry: {exc}")
    if isinstance(exc, CorruptSnapshotError):
        return DataLoss(f"embedding cache snapshot corrupt: {exc}")
    if isinstance(exc, FmVersionMismatchError):
        return ModelNotReady(f"embedding cache holds other codes than the model needs: {exc}")
    return ModelNotReady(f"embedding cache lookup failed: {exc}")


def open_error(exc: Exception, fm_version: str) -> RankingError:
    """Opening a reader: an unreachable cache is UNAVAILABLE (retry, it is not the model's fault);
    every other refusal means the model's codes cannot be read, so the version is not ready."""
    from embedding_cache import CacheUnavailableError

    if isinstance(exc, CacheUnavailableError):
        if timed_out(exc):
            return BackendTimeout(f"embedding cache timed out while opening {fm_version!r}: {exc}")
        return BackendUnavailable(f"embedding cache unavailable while opening {fm_version!r}: {exc}")
    return ModelNotReady(f"embedding cache has no usable snapshot of {fm_version!r}: {exc}")


class HistoryInputs(NamedTuple):
    """A request's history tensors, its flags, the lookup time and the snapshot read (a NamedTuple: built
    once per request, where a frozen dataclass's __init__ costs a measurable share of the stage)."""

    tensors: dict[str, np.ndarray]
    flags: tuple[int, ...]
    cache_us: int
    snapshot_id: str


@dataclass(frozen=True)
class _Need:
    """What a model version reads: L codes of width d, and the codec it was trained on ('' = unrecorded)."""

    length: int
    width: int
    codec: str


def _need(handle: ModelHandle) -> _Need:
    spec = {i.name: i for i in handle.manifest.inputs}[FM_HISTORY]
    recorded = handle.manifest.history or {}
    return _Need(int(spec.shape[1]), int(spec.shape[2]), str(recorded.get("codec", "")))


class HistoryProvider:
    """Opens cache readers lazily per fm_version. `backend`: "embedded" (location = directory),
    "redis" (location = redis:// URL) or "none" (no cache: LoopFM models are refused).

    `cache_timeout_s` bounds one Redis lookup; `breaker` decides when lookups are skipped; `fallback`
    is "prior" (score with the population prior, flagged) or "fail" (UNAVAILABLE)."""

    def __init__(self, backend: str = "none", location: str = "", *, refresh_s: float = 5.0,
                 cache_timeout_s: float = 0.05, fallback: str = "prior", breaker: CircuitBreaker | None = None,
                 registry: CollectorRegistry | None = None, snapshot_id: str | None = None) -> None:
        """`registry`: where each reader exports its hit-rate, staleness and snapshot-age metrics (the
        server passes its /metrics registry). `snapshot_id`: pin every reader to that snapshot instead
        of following the newest one (replay re-reads the snapshot a logged request was served from)."""
        self.backend, self.location, self.refresh_s = backend, location, refresh_s
        self.registry, self.snapshot_id = registry, snapshot_id
        self.cache_timeout_s, self.fallback = cache_timeout_s, fallback
        self.breaker = breaker or CircuitBreaker()
        self._readers: dict[str, object] = {}
        self._open_failed: dict[str, tuple[float, RankingError]] = {}  # fm_version -> (when, why)
        self._priors: dict[str, np.ndarray] = {}
        self._needs: dict[tuple[str, int, str], _Need] = {}
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None  # Redis lookups: apart from the loop's default pool
        # id(handle) -> (handle, the reader's served-history lookup bound to its L, width and codec, the
        # model's mask rows); the handle is kept so its id cannot be reused by another while it is here
        self._fast: dict[int, tuple] = {}

    def _need(self, handle: ModelHandle) -> _Need:
        key = (handle.name, handle.version, handle.fm_version)
        need = self._needs.get(key)
        if need is None:
            need = self._needs[key] = _need(handle)
        return need

    def reader(self, fm_version: str, *, retry: bool = False):  # -> embedding_cache.CacheReader
        r = self._readers.get(fm_version)
        if r is not None:
            return r
        if self.backend == "none":
            raise ModelNotReady(f"model needs FM history of {fm_version!r} but the server has no embedding cache "
                                "(start it with --cache-dir or --cache-url)")
        from embedding_cache import open_reader

        failed = self._open_failed.get(fm_version)
        # a failed open is retried only by the readiness check (`retry`, off the event loop, at most
        # every refresh_s): requests of a version whose codes are absent, or whose cache is down or
        # stalled, must not each pay a blocking round trip to find out again
        if failed is not None and (not retry or time.monotonic() - failed[0] < self.refresh_s):
            raise failed[1]
        with self._lock:
            if fm_version not in self._readers:
                try:
                    reader = open_reader(self.backend, self.location, fm_version,
                                         snapshot_id=self.snapshot_id, registry=self.registry)
                    self._keep_prior(reader)
                except CacheError as exc:
                    error = open_error(exc, fm_version)
                    self._open_failed[fm_version] = (time.monotonic(), error)
                    raise error from exc
                self._readers[fm_version] = reader
                self._open_failed.pop(fm_version, None)
            return self._readers[fm_version]

    def _keep_prior(self, reader) -> None:  # reader: embedding_cache.CacheReader
        """Remembers the snapshot's population prior: the one entry a user without history gets."""
        self._priors[reader.fm_version] = np.array(reader.population_prior, np.float32)

    def prior(self, fm_version: str) -> np.ndarray | None:
        """The last population prior seen for `fm_version` (None before its reader opened)."""
        return self._priors.get(fm_version)

    def refresh(self) -> None:
        """Lets every open reader switch to its newest published snapshot (a reference swap; a corrupt
        new snapshot is refused and the current one keeps serving)."""
        for fm_version, reader in list(self._readers.items()):
            try:
                if reader.refresh():
                    self._keep_prior(reader)
                    log.info("embedding cache %s: now serving snapshot %s", fm_version, reader.snapshot_id)
            except Exception as exc:  # noqa: BLE001 - keep serving the snapshot we have
                log.warning("embedding cache %s: refresh refused: %s", fm_version, exc)

    def check(self, handle: ModelHandle, *, retry: bool = False) -> None:
        """Raises ModelNotReady when a LoopFM model's codes cannot be read as it was trained on them
        (`retry`: try again to open a reader that failed to open; readiness checks do, requests not)."""
        if not needs_history(handle):
            return
        reader = self.reader(handle.fm_version, retry=retry)
        need = self._need(handle)
        if reader.dim < need.width:
            raise ModelNotReady(f"embedding cache codes of {handle.fm_version} have width {reader.dim}; "
                                f"{handle.name}/{handle.version} reads {need.width}")
        if need.codec and reader.codec_name != need.codec:
            raise ModelNotReady(f"embedding cache stores {handle.fm_version} as {reader.codec_name}; "
                                f"{handle.name}/{handle.version} was trained on {need.codec} codes")

    @property
    def cache_down_without_fallback(self) -> bool:
        """True while the breaker is not closed and the server is told to fail rather than degrade."""
        return self.backend != "none" and self.fallback == "fail" and not self.breaker.is_closed

    async def _lookup(self, reader, user_id: int, t_ms: int, length: int, timeout_s: float | None):
        if self.backend != "redis":  # memory-mapped, compiled kernel: microseconds, cheaper inline
            return reader.lookup(user_id, t_ms, length, _NO_ADS)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="adrank-cache")
        budget = self.cache_timeout_s if timeout_s is None else max(min(self.cache_timeout_s, timeout_s), 0.001)
        loop = asyncio.get_running_loop()
        try:  # network I/O: off the event loop, and never longer than the budget
            return await asyncio.wait_for(loop.run_in_executor(self._executor, reader.lookup, user_id, t_ms,
                                                               length, _NO_ADS), budget)
        except TimeoutError:
            raise BackendTimeout(f"embedding cache lookup took over {budget * 1e3:.0f} ms") from None

    async def inputs(self, handle: ModelHandle, user_id: int, t_ms: int, n_candidates: int, *,
                     timeout_s: float | None = None) -> HistoryInputs:
        """The request's history tensors; `timeout_s` is what is left of the request's deadline.

        On an in-process store (embedded, memory) a model's second request on takes the served-history
        lookup (embedding_cache.served_history) bound at its first: fm_version, codec and width were
        checked when it was bound (and are again when a refresh swaps the snapshot); the compiled call
        checks the arguments, decodes into the model's input and counts the lookup. No breaker: such a
        lookup has no network to fail. Everything else takes `_inputs`."""
        fast = self._fast.get(id(handle))
        if fast is not None and fast[0] is handle:
            t0 = _clock_ns()
            try:
                got = fast[1](user_id, t_ms)
            except CacheError as exc:
                raise lookup_error(exc) from exc
            if got is not None:
                codes, n_found, snapshot_id = got
                cache_us = (_clock_ns() - t0) // 1000
                index = _ZERO_VIEWS[n_candidates] if n_candidates <= _SHARED_INDEX else None
                if index is None:
                    index = _zero_index(n_candidates)
                if n_found:
                    tensors = request_tensors(codes, fast[2][n_found], index)
                    return _new_tuple(HistoryInputs, (tensors, (), cache_us, snapshot_id))
                tensors = request_tensors(codes, fast[2][1], index)  # the prior counts as one code
                return _new_tuple(HistoryInputs, (tensors, _NO_HISTORY, cache_us, snapshot_id))
        return await self._inputs(handle, user_id, t_ms, n_candidates, timeout_s)

    def _bind_fast(self, handle: ModelHandle, need: _Need, reader) -> None:
        """Binds the served-history lookup of an in-process reader for `handle`, after the checks that
        depend only on the model and the reader (the lookup re-checks the snapshot's width and codec)."""
        if reader.fm_version != handle.fm_version:  # never mix FM versions (readers are keyed by it)
            return
        try:
            lookup = reader.history_lookup(need.length, need.width, need.codec)
        except CacheError as exc:
            raise lookup_error(exc) from exc
        if len(self._fast) >= 256:  # handles of unloaded versions: drop them all, live ones rebind
            self._fast.clear()
        # a reader without the served kernel (no numba, or a codec it does not decode) is asked once
        self._fast[id(handle)] = (handle, _no_lookup if lookup is None else lookup.fetch, mask_rows(need.length))

    async def _inputs(self, handle: ModelHandle, user_id: int, t_ms: int, n_candidates: int,
                      timeout_s: float | None) -> HistoryInputs:
        """The general path: any backend, the breaker, the lookup's HistoryBatch checked per request."""
        need = self._need(handle)
        reader = self.reader(handle.fm_version)
        if self.backend != "redis" and id(handle) not in self._fast:
            from embedding_cache.memory import CsrReader

            if isinstance(reader, CsrReader):
                self._bind_fast(handle, need, reader)
                if id(handle) in self._fast:
                    return await self.inputs(handle, user_id, t_ms, n_candidates, timeout_s=timeout_s)
        t0 = time.perf_counter()
        breaker = self.breaker
        if not breaker.allow():
            return self._degraded(handle, need, n_candidates, t0, BackendUnavailable(
                "embedding cache circuit breaker is open"))
        try:
            try:
                hb, _, _ = await self._lookup(reader, user_id, t_ms, need.length, timeout_s)
            except CacheError as exc:
                raise lookup_error(exc) from exc
        except BackendUnavailable as exc:  # unreachable, slow, or snapshot gone: the cache's fault
            breaker.failure()
            if not breaker.is_closed:
                log.warning("embedding cache breaker open after %d failures: %s", breaker.consecutive_failures, exc)
            return self._degraded(handle, need, n_candidates, t0, exc)
        breaker.success()
        cache_us = int((time.perf_counter() - t0) * 1e6)
        if hb.fm_version != handle.fm_version:  # defence in depth: never mix FM versions
            raise ModelNotReady(f"cache returned {hb.fm_version} codes for a model trained with {handle.fm_version}")
        if hb.codes.shape[2] < need.width:
            raise ModelNotReady(f"cache codes have width {hb.codes.shape[2]}, model needs {need.width}")
        flags = _NO_HISTORY if bool(hb.fallback[0]) else ()
        tensors = history_tensors(hb.codes, hb.lengths, need.length, need.width, np.zeros(n_candidates, np.int64))
        return HistoryInputs(tensors, flags, cache_us, hb.snapshot_id)

    def _degraded(self, handle: ModelHandle, need: _Need, n_candidates: int, t0: float,
                  cause: BackendUnavailable) -> HistoryInputs:
        """The population prior as the user's one history entry, flagged; or `cause` when told to fail."""
        prior = self._priors.get(handle.fm_version)
        if self.fallback != "prior" or prior is None:
            raise cause
        codes = np.zeros((1, need.length, prior.shape[0]), np.float32)
        codes[0, 0] = prior
        tensors = history_tensors(codes, np.ones(1, np.int64), need.length, need.width,
                                  np.zeros(n_candidates, np.int64))
        return HistoryInputs(tensors, _DEGRADED, int((time.perf_counter() - t0) * 1e6), "")
