"""Inference through a Triton Inference Server over gRPC (`tritonclient.grpc.aio`).

What a version *is* comes from the repository's manifests (feature spec, fm_version, tensor names),
exactly as for the embedded backend; what is *servable* comes from Triton's repository index. A
version is offered only when both agree: a verified manifest and a READY version in Triton. The
intersection is refreshed on start, every `refresh_s`, and right after Triton answers NOT_FOUND
(a version was unloaded under us), so the next request resolves against the new truth.

Every request is one Triton call, with a timeout no longer than what is left of the request's
deadline (`serving.budget`), always naming the resolved version: the version reported in
`served_by` is the version that computed the scores, even while a newer one is being loaded.

Hot loading (the rollout registry's, `load_version` / `unload_version`) goes through Triton's model
control API without touching the versions that serve. Giving the served model one version more in its
`version_policy` would make Triton reload the model, and a reload starts fresh instances of *every*
version, the serving ones too (Triton issues #5757 and #8117): on the bundled server that stalled the
serving version for the whole load (p99 of v1 calls 21.6 ms while loading vs 6.3 ms before; 10.5 ms vs
5.3 ms when loaded as below; `python -m loadtests.triton_side_load`). So a hot-loaded version gets a
Triton model of its own, `<name>__v<version>` (`side_model_name`), loaded with the served model's config
(renamed, `version_policy` that one version) and the version folder's files sent with the load request
(Triton's file override: nothing is written into the repository, whose models stay what `scan` reads).
The version is warmed with a few requests before the table offers it; `infer` sends a handle's calls to
the Triton model holding its version. Unloading a side model unloads only it; a version of the served
model itself leaves the table at once and stays in Triton (no reload) until all of that model's
versions are retired, when the model is unloaded as a whole.

Usage::

    backend = TritonBackend("127.0.0.1:8001", "runs/demo/model_repository")
    await backend.start()
    handle = backend.resolve("vm", None)
    result = await backend.infer(handle, inputs)
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np

from exporters.manifest import ModelManifest
from models.features import FeatureSpec
from serving.backends.base import InferenceBackend, InferenceResult, ModelHandle
from serving.budget import capped_timeout
from serving.errors import (
    BackendTimeout,
    BackendUnavailable,
    InferenceFailed,
    InvalidRequest,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    RankingError,
)
from serving.model_repository import scan

log = logging.getLogger(__name__)

CHANNEL_ARGS = [
    ("grpc.max_send_message_length", 2**31 - 1), ("grpc.max_receive_message_length", 2**31 - 1),
    # gRPC's default reconnect back-off grows to 120 s: a Triton that restarts after an outage would stay
    # unused for minutes. Retrying every second at most lets the breaker's probe find it within ~1 s.
    ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
"""Channel options of the Triton client (tritonclient's defaults are replaced, not extended)."""
_TRITON_DTYPES = {"int64": "INT64", "int32": "INT32", "float32": "FP32", "float16": "FP16"}


def map_triton_error(exc: Exception, where: str) -> RankingError:
    """The serving error for a tritonclient exception: its gRPC status decides the type, and the
    message keeps Triton's status and words, prefixed with what was being asked (`where`).

    | Triton answers                            | raised               | status              |
    |-------------------------------------------|----------------------|---------------------|
    | NOT_FOUND (unknown model or version)      | ModelNotFound        | NOT_FOUND           |
    | UNAVAILABLE "… is not at ready state"     | ModelNotReady        | FAILED_PRECONDITION |
    | INVALID_ARGUMENT (tensor shape, dtype)    | InvalidRequest       | INVALID_ARGUMENT    |
    | DEADLINE_EXCEEDED, asyncio timeout        | BackendTimeout       | DEADLINE_EXCEEDED   |
    | UNAVAILABLE, CANCELLED, RESOURCE_EXHAUSTED, no status (connection) | BackendUnavailable | UNAVAILABLE |
    | anything else (INTERNAL: the model failed) | InferenceFailed     | INTERNAL            |
    """
    from tritonclient.utils import InferenceServerException

    status, message = "", str(exc) or type(exc).__name__
    if isinstance(exc, InferenceServerException):
        status, message = str(exc.status() or ""), exc.message() or message
    text = f"{where}: Triton {status.removeprefix('StatusCode.') or 'error'}: {message}"
    if status.endswith("NOT_FOUND"):
        return ModelNotFound(text)
    if status.endswith("UNAVAILABLE") and "not at ready state" in message:
        return ModelNotReady(text)  # loaded but unloading or failed: the version exists, it cannot serve
    if status.endswith("INVALID_ARGUMENT"):
        return InvalidRequest(text)
    if status.endswith("DEADLINE_EXCEEDED") or (not status and isinstance(exc, TimeoutError)):
        return BackendTimeout(text)
    if status.endswith(("UNAVAILABLE", "CANCELLED", "RESOURCE_EXHAUSTED")) or not status:
        return BackendUnavailable(text)
    return InferenceFailed(text)


def side_model_name(name: str, version: int) -> str:
    """The Triton model a hot-loaded version is served as: `vm` version 2 is `vm__v2` (version 2)."""
    return f"{name}__v{version}"


class TritonBackend(InferenceBackend):
    """`resolve` reads a cached intersection of manifests and Triton's READY versions (no I/O);
    `infer` makes exactly one Triton call."""

    name = "triton"
    _where = " ready in Triton"

    def __init__(self, url: str, repository: str | Path, *, timeout_s: float = 2.0, refresh_s: float = 5.0) -> None:
        self.url = url
        self.repository = Path(repository)
        self.timeout_s = timeout_s
        self.refresh_s = refresh_s
        self.load_errors: dict[tuple[str, int], str] = {}
        self._handles: dict[tuple[str, int], ModelHandle] = {}
        self._client = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._refresher: asyncio.Task | None = None
        self._refresh_lock = asyncio.Lock()
        self._background: set[asyncio.Task] = set()  # strong references until the tasks finish
        self._retired: set[tuple[str, int]] = set()  # versions of a served model out of the table, still in Triton
        self._side: dict[tuple[str, int], str] = {}  # hot-loaded versions -> the Triton model holding each

    def _triton(self):
        """The aio client of the running event loop. A grpc.aio channel is bound to the loop that made
        it, so a backend reused under a new loop (asyncio.run per test or per CLI call) gets a new one."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            try:
                import tritonclient.grpc.aio as grpcclient
            except ImportError as exc:  # pragma: no cover - tritonclient is a base dependency
                raise BackendUnavailable(f"tritonclient[grpc] is not installed: {exc}") from exc
            self._client = grpcclient.InferenceServerClient(self.url, channel_args=CHANNEL_ARGS)
            self._client_loop = loop
            self._refresh_lock = asyncio.Lock()
        return self._client

    async def start(self) -> None:
        """Connects and builds the model table; raises BackendUnavailable when Triton does not answer,
        ModelLoadError when it serves no version the repository describes."""
        await self.refresh()
        if not self._handles:
            raise ModelLoadError(f"Triton at {self.url} serves no version described by {self.repository} "
                                 f"(manifest errors: {sorted(self.load_errors.values())[:3]})")
        self._refresher = asyncio.create_task(self._refresh_forever())

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            self._refresher = None
        if self._client is not None and self._client_loop is asyncio.get_running_loop():
            await self._client.close()
        self._client, self._client_loop = None, None

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
            except RankingError as exc:  # keep serving the last known table; infer reports outages
                log.warning("Triton refresh failed: %s", exc)

    async def refresh(self) -> None:
        """Re-reads manifests and Triton's repository index; replaces the table in one assignment."""
        client = self._triton()
        async with self._refresh_lock:
            try:
                index = await client.get_model_repository_index(client_timeout=self.timeout_s)
            except Exception as exc:  # tritonclient wraps gRPC errors in InferenceServerException
                raise map_triton_error(exc, f"Triton at {self.url}") from exc
            ready = {(m.name, int(m.version)) for m in index.models if m.state == "READY" and m.version.isdigit()}
            ready -= set(self._side)  # a hot-loaded version serves from its side model, nowhere else
            manifests, errors = await asyncio.to_thread(scan, self.repository)
            # Side models are loaded by file override, so the index does not list them: ask for each
            # version the repository holds that the served model does not (this backend's own loads, and
            # those of another process using this Triton, e.g. before a restart of this server).
            for key in sorted(set(manifests) - ready):
                side = self._side.get(key, side_model_name(*key))
                try:
                    side_ready = await client.is_model_ready(side, str(key[1]), client_timeout=self.timeout_s)
                except Exception:  # noqa: BLE001 - not loaded (or Triton restarted): a later load brings it back
                    side_ready = False
                if side_ready:
                    ready.add(key)
                    self._side[key] = side
            self.load_errors = dict(errors)
            handles = {}
            for key, manifest in manifests.items():
                if key in ready and key not in self._retired:
                    old = self._handles.get(key)
                    handles[key] = old if old is not None and old.manifest == manifest else self._handle(key, manifest)
            for key in sorted(ready & set(errors)):
                log.warning("Triton serves %s/%s but its manifest fails verification: %s", *key, errors[key])
            self._handles = handles

    @staticmethod
    def _handle(key: tuple[str, int], manifest: ModelManifest) -> ModelHandle:
        return ModelHandle(key[0], key[1], manifest, FeatureSpec.from_dict(manifest.feature_spec))

    def _request(self, handle: ModelHandle, inputs: dict[str, np.ndarray]):
        import tritonclient.grpc.aio as grpcclient

        tensors = []
        for spec in handle.manifest.inputs:
            if spec.name not in inputs:
                raise InvalidRequest(f"inputs: {handle.name}/{handle.version} needs tensor {spec.name!r}")
            array = np.ascontiguousarray(inputs[spec.name], dtype=np.dtype(spec.dtype))
            tensor = grpcclient.InferInput(spec.name, list(array.shape), _TRITON_DTYPES[spec.dtype])
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        outputs = [grpcclient.InferRequestedOutput(o.name) for o in handle.manifest.outputs]
        return tensors, outputs

    async def infer(self, handle: ModelHandle, inputs: dict[str, np.ndarray]) -> InferenceResult:
        tensors, outputs = self._request(handle, inputs)
        try:
            model = self._side.get((handle.name, handle.version), handle.name)
            result = await self._triton().infer(model, tensors, model_version=str(handle.version),
                                                outputs=outputs, client_timeout=capped_timeout(self.timeout_s))
        except Exception as exc:
            error = map_triton_error(exc, f"{handle.name}/{handle.version}")
            if isinstance(error, ModelNotFound | ModelNotReady):
                # the version went away or is going (unloaded, retired): refresh so the next resolve is right
                task = asyncio.get_running_loop().create_task(self._refresh_quietly())
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            raise error from exc
        return InferenceResult(result.as_numpy("p_ctr").reshape(-1), result.as_numpy("p_cvr").reshape(-1))

    async def ready(self) -> bool:
        """Triton answers its readiness RPC within the backend's timeout."""
        try:
            return bool(await self._triton().is_server_ready(client_timeout=min(self.timeout_s, 1.0)))
        except Exception:  # noqa: BLE001 - any failure to answer means not ready
            return False

    # -- model control: hot loading for rollouts --------------------------------------------------------
    def triton_model(self, name: str, version: int) -> str:
        """The Triton model that computes `name/version`: its side model when hot-loaded, else `name`."""
        return self._side.get((name, version), name)

    async def _served_config(self, name: str) -> dict:
        """The config of a loaded Triton model of `name` (the served model, else one of its side models),
        for a side model to copy: tensors, batching and instances as the operator configured them."""
        client = self._triton()
        candidates = [name, *(side for (n, _), side in sorted(self._side.items()) if n == name)]
        errors = []
        for model in candidates:
            try:
                return (await client.get_model_config(model, as_json=True, client_timeout=self.timeout_s))["config"]
            except Exception as exc:  # noqa: BLE001 - tritonclient wraps every failure in one exception type
                errors.append(str(map_triton_error(exc, f"Triton model {model}")))
        raise ModelLoadError(f"{name}: no loaded Triton model to copy a config from ({'; '.join(errors)})")

    def _version_files(self, name: str, version: int, backend: str) -> dict[str, bytes]:
        """Triton's file override for `<name>/<version>`: every regular file of the version folder (kept
        inside it: a link out of the folder is refused), and for the python backend the generated model.py."""
        from exporters.triton_repo import PYTHON_MODEL_FILE, PYTHON_MODEL_SOURCE

        folder = (self.repository / name / str(version)).resolve()
        files = {}
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            real = path.resolve()
            if not real.is_relative_to(folder):
                raise ModelLoadError(f"{name}/{version}: {path.relative_to(folder)} leaves the version folder")
            files[f"file:{version}/{path.relative_to(folder).as_posix()}"] = real.read_bytes()
        if backend == "python":
            files[f"file:{version}/{PYTHON_MODEL_FILE}"] = PYTHON_MODEL_SOURCE.encode()
        return files

    async def load_version(self, name: str, version: int) -> ModelHandle:
        """Loads `name/version` as its own Triton model beside the serving ones (module docstring), warms
        it, and offers it once Triton reports it ready. A retired version still in the served model comes
        back without any load."""
        import json

        from exporters.manifest import ManifestError, read_manifest
        from serving.backends.base import WARM_REQUESTS, freeze_heap, warm_inputs, warm_rows

        key = (name, version)
        if key in self._handles:
            return self._handles[key]
        try:
            manifest = await asyncio.to_thread(read_manifest, self.repository / name / str(version))
        except ManifestError as exc:
            raise ModelLoadError(f"{name}/{version}: not loaded: {exc}") from exc
        if key in self._retired:  # still loaded in the served model: back in the table, no reload
            self._retired.discard(key)
            await self.refresh()
            if key in self._handles:
                return self._handles[key]
        side = side_model_name(name, version)
        config = await self._served_config(name)
        config["name"] = side
        config["version_policy"] = {"specific": {"versions": [version]}}
        files = await asyncio.to_thread(self._version_files, name, version, config.get("backend", ""))
        try:
            await self._triton().load_model(side, config=json.dumps(config), files=files, client_timeout=120)
        except Exception as exc:  # noqa: BLE001 - the versions already loaded keep serving
            raise ModelLoadError(f"{name}/{version}: Triton refused to load it as {side}: {exc}") from exc
        self._side[key] = side
        handle = self._handle(key, manifest)
        most = int(config.get("max_batch_size") or 0)  # a batched model refuses more rows than this
        for i in range(WARM_REQUESTS):  # before the table offers it; the stub's session sees serving-sized batches
            await self.infer(handle, warm_inputs(manifest, min(warm_rows(i), most) if most > 0 else warm_rows(i)))
        await self.refresh()
        if key not in self._handles:
            raise ModelLoadError(f"{name}/{version}: Triton loaded {side} but does not report it READY")
        freeze_heap()
        log.info("Triton loaded %s/%s as %s beside %s", name, version, side, self.models().get(name))
        return self._handles[key]

    async def unload_version(self, name: str, version: int) -> None:
        """Out of the table now; a side model is unloaded with it, a version of the served model stays in
        Triton until every version of that model is retired (module docstring)."""
        if self.models().get(name) == [version]:
            raise ModelLoadError(f"{name}: Triton must keep at least one version loaded; {version} is the last")
        key = (name, version)
        self._handles = {k: v for k, v in self._handles.items() if k != key}
        side = self._side.pop(key, None)
        client = self._triton()
        if side is not None:
            await self._unload(client, side)
            return
        self._retired.add(key)
        index = await client.get_model_repository_index(client_timeout=self.timeout_s)
        served = {(m.name, int(m.version)) for m in index.models
                  if m.name == name and m.state == "READY" and m.version.isdigit()}
        if served and served <= self._retired:
            await self._unload(client, name)
            self._retired -= served

    async def _unload(self, client, model: str) -> None:
        try:
            await client.unload_model(model, client_timeout=self.timeout_s)
        except Exception as exc:  # noqa: BLE001 - out of the table already; Triton keeps it loaded
            log.warning("Triton could not unload %s: %s", model, map_triton_error(exc, f"Triton model {model}"))
        else:
            log.info("Triton unloaded %s", model)

    async def _refresh_quietly(self) -> None:
        try:
            await self.refresh()
        except RankingError as exc:
            log.warning("Triton refresh after a version went away failed: %s", exc)
