"""The contract every inference backend fulfils.

The service resolves a (name, version pin) to a `ModelHandle` first — that is where NOT_FOUND comes
from — then builds features with the handle's feature spec and calls `infer` once per request.
"""

from __future__ import annotations

import abc
import gc
from dataclasses import dataclass

import numpy as np

from exporters.manifest import ModelManifest
from models.features import FeatureSpec
from serving.errors import ModelLoadError, ModelNotFound


@dataclass(frozen=True)
class ModelHandle:
    name: str
    version: int
    manifest: ModelManifest
    feature_spec: FeatureSpec

    @property
    def fm_version(self) -> str:
        return self.manifest.fm_version


WARM_ROWS = 8
WARM_REQUESTS = 3
"""Batches a hot-loaded version runs before it becomes resolvable (first runs allocate and pick kernels)."""
WARM_BATCH_ROWS = (WARM_ROWS, 128, 512)
"""Rows of the warm-up batches, in turn: onnxruntime plans its memory per input shape, so a session warmed
only on 8 rows would still plan (and allocate) on the first caller's batch of a hundred candidates."""


def warm_rows(i: int) -> int:
    """Rows of the `i`-th warm-up batch."""
    return WARM_BATCH_ROWS[i % len(WARM_BATCH_ROWS)]


def freeze_heap() -> None:
    """After a hot load: move every object the interpreter tracks out of the garbage collector's walk
    (`gc.freeze`, O(1)). The next full collection then scans only what was allocated since, not every
    module, protobuf class and array the server holds — a full collection of the server's heap takes
    12-14 ms on one core, held under the GIL, i.e. a stall of every request in flight. A `gc.collect()`
    here instead would be that very stall."""
    gc.freeze()


def warm_inputs(manifest: ModelManifest, rows: int = WARM_ROWS) -> dict[str, np.ndarray]:
    """Zero inputs shaped as the manifest declares ("batch" rows, one user for per-user inputs): every id
    0 and every history slot empty is a valid request, so a warm-up can never fail on its values."""
    out = {}
    for spec in manifest.inputs:
        shape = tuple(1 if d == "users" else rows if isinstance(d, str) else int(d) for d in spec.shape)
        out[spec.name] = np.zeros(shape, dtype=np.dtype(spec.dtype))
    return out


@dataclass(frozen=True)
class InferenceResult:
    p_ctr: np.ndarray  # float32 [B]
    p_cvr: np.ndarray  # float32 [B]
    backend: str = ""  # who computed it, when a backend delegates (serving.backends.fallback); "" = the backend called


class InferenceBackend(abc.ABC):
    """`resolve` is cheap and synchronous; `infer` is awaited once per request. Subclasses keep the
    versions they can serve in `_handles`; resolution rules are shared so every backend routes alike."""

    name: str = "abstract"
    _handles: dict[tuple[str, int], ModelHandle]
    _where: str = ""  # how NOT_FOUND messages describe where models are looked for
    # models(): (the `_handles` dict it was built from, its length, the table)
    _models_memo: tuple[object, int, dict[str, list[int]]] | None = None

    def models(self) -> dict[str, list[int]]:
        """Loaded versions per model name, ascending. Read-only: the table is kept until `_handles` is
        replaced (backends replace it by a new dict on every load and unload, never change it in place),
        so the route stage's two resolutions per request do not rebuild it each time."""
        handles = self._handles
        memo = self._models_memo
        if memo is not None and memo[0] is handles and memo[1] == len(handles):  # len: a change made in place
            return memo[2]
        out: dict[str, list[int]] = {}
        for name, version in sorted(handles):
            out.setdefault(name, []).append(version)
        self._models_memo = (handles, len(handles), out)
        return out

    def resolve(self, model_name: str, version: int | None) -> ModelHandle:
        """The handle for a pinned version, or the newest loaded version when None.
        Raises ModelNotFound naming what exists."""
        versions = self.models().get(model_name)
        if not versions:
            raise ModelNotFound(f"model.name: no model {model_name!r}{self._where}; serving {sorted(self.models())}")
        if version is None:
            return self._handles[(model_name, versions[-1])]
        if version not in versions:
            raise ModelNotFound(f"model.version: {model_name!r} has no version {version}; loaded versions {versions}")
        return self._handles[(model_name, version)]

    @abc.abstractmethod
    async def infer(self, handle: ModelHandle, inputs: dict[str, np.ndarray]) -> InferenceResult:
        """Runs the model once on the assembled batch."""

    async def infer_aside(self, handle: ModelHandle, inputs: dict[str, np.ndarray]) -> InferenceResult:
        """An inference no caller waits for (a shadow mirror, the transfer sample's second scoring): it
        must give way to the requests being answered. A remote backend's call already leaves the event
        loop free while it runs, so by default it is `infer`; an in-process backend runs it off the loop."""
        return await self.infer(handle, inputs)

    async def ready(self) -> bool:
        """Whether the backend can infer now (a remote server answers); in-process backends always can.
        Health turns NOT_SERVING while it cannot and no fallback is configured."""
        return True

    async def load_version(self, name: str, version: int) -> ModelHandle:
        """Loads `name/version` from the repository beside the versions serving, warms it, and only then
        makes it resolvable (hot loading, driven by the rollout registry). Backends that cannot say so."""
        raise ModelLoadError(f"{name}/{version}: the {self.name} backend cannot load versions while serving")

    async def unload_version(self, name: str, version: int) -> None:
        """Stops serving `name/version` and frees it; the caller checks that no route points at it."""
        raise ModelLoadError(f"{name}/{version}: the {self.name} backend cannot unload versions while serving")

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connects / loads; called once before serving."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Releases sessions and channels."""
