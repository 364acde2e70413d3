"""FM history for LoopFM models at request time, read from the embedding cache.

Each model version names the fm_version it was trained with (manifest); the provider opens one cache
reader per fm_version and never serves a model codes of another version. A model whose fm_version is
absent from the cache is refused at load (FAILED_PRECONDITION) rather than served without history.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np

from protos.adrank.v1 import ranking_pb2
from serving.backends.base import ModelHandle
from serving.errors import BackendUnavailable, ModelNotReady

log = logging.getLogger(__name__)


def needs_history(handle: ModelHandle) -> bool:
    return any(i.name == "fm_history" for i in handle.manifest.inputs)


@dataclass(frozen=True)
class HistoryInputs:
    tensors: dict[str, np.ndarray]
    flags: tuple[int, ...]
    cache_us: int


class HistoryProvider:
    """Opens cache readers lazily per fm_version. `backend`: "embedded" (location = directory),
    "redis" (location = redis:// URL) or "none" (no cache: LoopFM models are refused)."""

    def __init__(self, backend: str = "none", location: str = "", *, refresh_s: float = 5.0) -> None:
        self.backend, self.location, self.refresh_s = backend, location, refresh_s
        self._readers: dict[str, object] = {}
        self._lock = threading.Lock()

    def reader(self, fm_version: str):  # -> embedding_cache.CacheReader
        r = self._readers.get(fm_version)
        if r is not None:
            return r
        if self.backend == "none":
            raise ModelNotReady(f"model needs FM history of {fm_version!r} but the server has no embedding cache "
                                "(start it with --cache-dir or --cache-url)")
        from embedding_cache import CacheError, open_reader

        with self._lock:
            if fm_version not in self._readers:
                try:
                    self._readers[fm_version] = open_reader(self.backend, self.location, fm_version)
                except CacheError as exc:
                    raise ModelNotReady(f"embedding cache has no usable snapshot of {fm_version!r}: {exc}") from exc
            return self._readers[fm_version]

    def refresh(self) -> None:
        """Lets every open reader switch to its newest published snapshot (a reference swap; a corrupt
        new snapshot is refused and the current one keeps serving)."""
        for fm_version, reader in list(self._readers.items()):
            try:
                if reader.refresh():
                    log.info("embedding cache %s: now serving snapshot %s", fm_version, reader.snapshot_id)
            except Exception as exc:  # noqa: BLE001 - keep serving the snapshot we have
                log.warning("embedding cache %s: refresh refused: %s", fm_version, exc)

    def check(self, handle: ModelHandle) -> None:
        """Raises ModelNotReady when a LoopFM model's fm_version cannot be read."""
        if needs_history(handle):
            self.reader(handle.fm_version)

    async def inputs(self, handle: ModelHandle, user_id: int, t_ms: int, n_candidates: int) -> HistoryInputs:
        from embedding_cache import CacheError, CacheUnavailableError

        spec = {i.name: i for i in handle.manifest.inputs}["fm_history"]
        max_len, dim = int(spec.shape[1]), int(spec.shape[2])
        reader = self.reader(handle.fm_version)
        t0 = time.perf_counter()
        try:
            if self.backend == "redis":  # network I/O: keep it off the event loop
                hb = await asyncio.to_thread(reader.user_history, np.array([user_id]), t_ms, max_len)
            else:  # memory-mapped numpy: microseconds, cheaper inline than a thread hop
                hb = reader.user_history(np.array([user_id]), t_ms, max_len)
        except CacheUnavailableError as exc:
            raise BackendUnavailable(f"embedding cache unavailable: {exc}") from exc
        except CacheError as exc:
            raise ModelNotReady(f"embedding cache lookup failed: {exc}") from exc
        cache_us = int((time.perf_counter() - t0) * 1e6)
        if hb.fm_version != handle.fm_version:  # defence in depth: never mix FM versions
            raise ModelNotReady(f"cache returned {hb.fm_version} codes for a model trained with {handle.fm_version}")
        if hb.codes.shape[2] < dim:
            raise ModelNotReady(f"cache codes have width {hb.codes.shape[2]}, model needs {dim}")
        mask = (np.arange(max_len)[None, :] < hb.lengths[:, None]).astype(np.float32)
        flags = (ranking_pb2.FLAG_USER_HISTORY_MISSING,) if bool(hb.fallback[0]) else ()
        return HistoryInputs(
            {"fm_history": np.ascontiguousarray(hb.codes[:, :max_len, :dim], dtype=np.float32),
             "fm_history_mask": mask, "user_index": np.zeros(n_candidates, np.int64)},
            flags, cache_us)
