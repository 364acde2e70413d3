"""In-process onnxruntime backend: the default, needing no external server.

CUDA is selected automatically when onnxruntime-gpu reports it; otherwise the CPU provider with a
small intra-op thread count (a ranking batch of a few hundred rows gains nothing from more threads,
and several requests run concurrently).

Versions are hot-loaded and unloaded while serving (`load_version`, `unload_version`, driven by the
rollout registry): a new session is built and warmed in the loader thread, then the version tables are
replaced by new dicts in one assignment each, so a request never sees a half-added version and the
event loop never iterates a dict another thread is changing.

The loader thread runs at a lower OS priority (`LOADER_NICE` above the process's, set on its own native
thread id, which Linux schedules apart): on a host whose cores are all busy serving, reading, sealing
and warming a new version takes whatever CPU the serving threads leave rather than competing with them
for it. It only ever loads, so it never needs its priority back (raising it again would need
privileges). After each load the interpreter's objects are frozen (`gc.freeze`): the next full garbage
collection then walks only what was allocated since, not every module, protobuf class and tensor the
server holds, so the allocations of a load do not trigger a long collection on the event loop.

Inferences no caller waits for (`infer_aside`: shadow mirrors, the transfer sample's second scoring)
run in a second low-priority thread rather than inline on the event loop: inline, a mirror's model run
held the loop for its whole length, and a live request arriving meanwhile waited behind it.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from exporters.manifest import ModelManifest, read_manifest
from models.features import FeatureSpec
from serving.backends.base import (
    InferenceBackend,
    InferenceResult,
    ModelHandle,
    freeze_heap,
    warm_inputs,
    warm_rows,
)
from serving.errors import InferenceFailed, InvalidRequest, ModelLoadError, ModelNotFound, RankingError
from serving.model_repository import scan
from serving.priority import lower_thread_priority

log = logging.getLogger(__name__)
LOADER_NICE = 10
"""How much nicer than the process the loader thread runs (0..19; Linux and other POSIX hosts)."""
ASIDE_NICE = 10
"""How much nicer than the process the thread of `infer_aside` runs (shadow mirrors, the transfer sample)."""


def map_onnxruntime_error(exc: Exception, where: str) -> RankingError:
    """The serving error for an exception from `InferenceSession.run`: inputs the graph refuses
    (shape, dtype, missing tensor) are INVALID_ARGUMENT as Triton reports them, so both backends
    answer alike; any other runtime failure is InferenceFailed (INTERNAL) naming the model."""
    kind = type(exc).__name__
    if isinstance(exc, InvalidArgument):
        return InvalidRequest(f"{where}: onnxruntime {kind}: {exc}")
    return InferenceFailed(f"{where}: onnxruntime {kind}: {exc}")


def providers() -> list[str]:
    """CUDA first when this onnxruntime build has it (onnxruntime-gpu on a GPU host), else CPU."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class EmbeddedBackend(InferenceBackend):
    name = "embedded"

    def __init__(self, repository: str | Path, *, intra_op_threads: int = 1, loader_nice: int = LOADER_NICE) -> None:
        self.repository = Path(repository)
        self.intra_op_threads = intra_op_threads
        self.loader_nice = loader_nice
        self._sessions: dict[tuple[str, int], ort.InferenceSession] = {}
        self._handles: dict[tuple[str, int], ModelHandle] = {}
        self.load_errors: dict[tuple[str, int], str] = {}
        self._loader: ThreadPoolExecutor | None = None
        self._aside: ThreadPoolExecutor | None = None

    def loader(self) -> ThreadPoolExecutor:
        """The one thread hot loads run in, at a lower OS priority (module docstring); made on first use."""
        if self._loader is None:
            self._loader = ThreadPoolExecutor(1, thread_name_prefix="adrank-loader", initializer=lower_thread_priority,
                                              initargs=(self.loader_nice,))
        return self._loader

    def aside(self) -> ThreadPoolExecutor:
        """The one thread `infer_aside` runs in, at a lower OS priority; made on first use."""
        if self._aside is None:
            self._aside = ThreadPoolExecutor(1, thread_name_prefix="adrank-aside", initializer=lower_thread_priority,
                                             initargs=(ASIDE_NICE,))
        return self._aside

    def _session(self, path: Path) -> ort.InferenceSession:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.intra_op_threads
        opts.inter_op_num_threads = 1
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers())

    def load(self) -> None:
        """(Re)scans the repository; versions that fail verification are reported and skipped while
        the versions already loaded keep serving."""
        manifests, errors = scan(self.repository)
        self.load_errors = dict(errors)
        for key, manifest in manifests.items():
            if key in self._handles:
                continue
            try:
                self._add(key, manifest)
            except Exception as exc:  # onnxruntime raises several types for bad graphs
                self.load_errors[key] = f"{key[0]}/{key[1]}: {exc}"
        for key, err in self.load_errors.items():
            log.warning("model %s/%s not loaded: %s", key[0], key[1], err)
        if not self._handles:
            raise ModelLoadError(f"no loadable model in {self.repository} ({len(self.load_errors)} refused)")

    def _add(self, key: tuple[str, int], manifest: ModelManifest, *, warm_requests: int = 0) -> ModelHandle:
        session = self._session(self.repository / key[0] / str(key[1]) / manifest.model_file)
        expected = {i.name for i in manifest.inputs}
        actual = {i.name for i in session.get_inputs()}
        if expected != actual:
            raise ModelLoadError(f"graph inputs {sorted(actual)} differ from the manifest's {sorted(expected)}")
        for i in range(warm_requests):  # first runs allocate arenas and pick kernels: not on a caller's time
            session.run(["p_ctr", "p_cvr"], warm_inputs(manifest, warm_rows(i)))
        handle = ModelHandle(key[0], key[1], manifest, FeatureSpec.from_dict(manifest.feature_spec))
        self._sessions = {**self._sessions, key: session}
        self._handles = {**self._handles, key: handle}
        return handle

    def load_version_sync(self, name: str, version: int, *, warm_requests: int = 3) -> ModelHandle:
        """Reads and verifies `<repository>/<name>/<version>`, builds its session, runs `warm_requests`
        batches through it, then makes it resolvable. Loading a loaded version returns its handle."""
        key = (name, version)
        if key in self._handles:
            return self._handles[key]
        try:
            manifest = read_manifest(self.repository / name / str(version))
            if (manifest.name, manifest.version) != key:
                raise ModelLoadError(f"manifest says {manifest.name}/{manifest.version}")
            handle = self._add(key, manifest, warm_requests=warm_requests)
        except Exception as exc:  # manifest, onnxruntime and warm-up failures alike: the version stays out
            self.load_errors = {**self.load_errors, key: f"{name}/{version}: {exc}"}
            raise ModelLoadError(f"{name}/{version}: not loaded from {self.repository}: {exc}") from exc
        self.load_errors = {k: v for k, v in self.load_errors.items() if k != key}
        freeze_heap()
        log.info("loaded %s/%s beside %s (warmed with %d batches)", name, version, self.models().get(name),
                 warm_requests)
        return handle

    async def load_version(self, name: str, version: int) -> ModelHandle:
        return await asyncio.get_running_loop().run_in_executor(self.loader(), self.load_version_sync, name, version)

    async def unload_version(self, name: str, version: int) -> None:
        key = (name, version)
        released = [self._sessions.get(key)]
        self._handles = {k: v for k, v in self._handles.items() if k != key}
        self._sessions = {k: v for k, v in self._sessions.items() if k != key}
        # The session's last reference goes in a worker thread, so freeing its weights and arenas (large
        # for a big model) never runs on the event loop; a call still holding the handle keeps it alive.
        await asyncio.get_running_loop().run_in_executor(self.loader(), released.clear)
        log.info("unloaded %s/%s; serving %s", name, version, self.models().get(name, []))

    async def start(self) -> None:
        self.load()

    async def close(self) -> None:
        for pool in (self._loader, self._aside):
            if pool is not None:
                pool.shutdown(wait=False)
        self._loader = self._aside = None

    async def infer(self, handle: ModelHandle, inputs: dict[str, np.ndarray]) -> InferenceResult:
        # A few hundred rows take tens of microseconds: running inline beats a thread hop.
        return self._run(handle, inputs)

    async def infer_aside(self, handle: ModelHandle, inputs: dict[str, np.ndarray]) -> InferenceResult:
        """`infer` in the aside thread (one, at ASIDE_NICE): onnxruntime releases the interpreter lock while
        it computes, so a mirror's run no longer holds the event loop for its whole length — a request that
        arrives meanwhile is answered at once, and the OS gives the loop's thread the core first."""
        return await asyncio.get_running_loop().run_in_executor(self.aside(), self._run, handle, inputs)

    def _run(self, handle: ModelHandle, inputs: dict[str, np.ndarray]) -> InferenceResult:
        try:
            session = self._sessions[(handle.name, handle.version)]  # the handle's own, even if just retired
        except KeyError:  # a handle from another backend, or of a version no longer loaded
            raise ModelNotFound(f"model.version: {handle.name}/{handle.version} is not loaded; "
                                f"loaded versions {self.models().get(handle.name, [])}") from None
        try:
            p_ctr, p_cvr = session.run(["p_ctr", "p_cvr"], inputs)
        except Exception as exc:  # onnxruntime raises one type per error kind, all plain Exceptions
            raise map_onnxruntime_error(exc, f"{handle.name}/{handle.version}") from exc
        return InferenceResult(p_ctr, p_cvr)
