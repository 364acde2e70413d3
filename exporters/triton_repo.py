"""Turns an exported model folder into a Triton model: `<repo>/<model>/config.pbtxt` (+ `model.py`).

The exporter already writes Triton's layout, `<repo>/<model>/<version>/model.onnx + manifest.json`;
this module adds what Triton needs on top, for one of two targets:

* ``native`` — `backend: "onnxruntime"`, for the official Triton container (GPU or CPU);
* ``python`` — `backend: "python"`: a generated `model.py` in each version folder runs the same
  `model.onnx` with onnxruntime. The tritonserver bundled in nvidia-pytriton has only the python
  backend, so this is what local runs and the integration tests use.

``auto`` picks ``native`` when the server's backend directory has `onnxruntime/`, else ``python``.

Every version is validated before anything is written (manifest hash, `onnx.checker`, graph inputs
against the manifest), and `config.pbtxt` is replaced atomically, so a corrupt export is refused with
a clear error while the config the server already uses stays intact.

Usage::

    config = TritonModelConfig(max_batch_size=1024, preferred_batch_sizes=(200, 400))
    write_triton_model("runs/demo/model_repository", "vm", target="python", config=config)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from exporters.manifest import ManifestError, ModelManifest, read_manifest

CONFIG_FILE = "config.pbtxt"
PYTHON_MODEL_FILE = "model.py"
TARGETS = ("native", "python", "auto")
_TRITON_DTYPES = {"int64": "TYPE_INT64", "int32": "TYPE_INT32", "float32": "TYPE_FP32", "float16": "TYPE_FP16"}
_ONNX_DTYPES = {7: "int64", 6: "int32", 1: "float32", 10: "float16"}  # onnx.TensorProto elem types


class TritonRepoError(ValueError):
    """A model folder cannot be served by Triton: a corrupt or mismatched version, bad arguments."""


@dataclass(frozen=True, kw_only=True)
class TritonModelConfig:
    """What `config.pbtxt` says beyond the tensors (which come from the manifests)."""

    max_batch_size: int = 1024
    """`max_batch_size`; rows per batch after the dynamic batcher merged requests. Models whose inputs
    are not all batch-major (LoopFM histories are per user) get 0: no batcher, whole shapes."""
    preferred_batch_sizes: tuple[int, ...] = (200, 400, 800)
    """`dynamic_batching.preferred_batch_size`: a ranking request carries ~200 candidates."""
    max_queue_delay_us: int = 100
    """`dynamic_batching.max_queue_delay_microseconds`: ≈ 0.3 ms at batch 1 on the bundled server."""
    instance_count: int = 1
    """`instance_group.count`; each python-backend instance is one process (≈ 80 MB)."""
    kind: str = "auto"
    """`instance_group.kind`: "KIND_CPU", "KIND_GPU" or "auto" (GPU when one is present)."""
    version_policy: str = "specific"
    """"specific" lists exactly the validated versions; "all" serves whatever folders exist."""

    def __post_init__(self) -> None:
        if self.max_batch_size < 0 or self.instance_count < 1 or self.max_queue_delay_us < 0:
            raise TritonRepoError("max_batch_size and max_queue_delay_us must be >= 0, instance_count >= 1")
        if self.kind not in ("auto", "KIND_CPU", "KIND_GPU"):
            raise TritonRepoError(f"kind must be auto, KIND_CPU or KIND_GPU, got {self.kind!r}")
        if self.version_policy not in ("specific", "all"):
            raise TritonRepoError(f"version_policy must be 'specific' or 'all', got {self.version_policy!r}")


def gpu_present() -> bool:
    """True when onnxruntime has a CUDA provider or `nvidia-smi` runs and lists a GPU."""
    try:
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            return True
    except ImportError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and "GPU" in out.stdout


def instance_kind(config: TritonModelConfig, target: str) -> str:
    """The python target runs onnxruntime's CPU provider unless onnxruntime-gpu is installed."""
    if config.kind != "auto":
        return config.kind
    if target == "python":
        try:
            import onnxruntime as ort

            return "KIND_GPU" if "CUDAExecutionProvider" in ort.get_available_providers() else "KIND_CPU"
        except ImportError:
            return "KIND_CPU"
    return "KIND_GPU" if gpu_present() else "KIND_CPU"


def resolve_target(target: str, backend_directory: str | Path | None = None) -> str:
    """`native` / `python` as given; `auto` lists the server's backend directory (the bundled server's,
    `$TRITON_BACKEND_DIR`, or /opt/tritonserver/backends in the official container)."""
    if target not in TARGETS:
        raise TritonRepoError(f"target must be one of {TARGETS}, got {target!r}")
    if target != "auto":
        return target
    return "native" if "onnxruntime" in available_backends(backend_directory) else "python"


def available_backends(backend_directory: str | Path | None = None) -> set[str]:
    candidates = [backend_directory, os.environ.get("TRITON_BACKEND_DIR"), "/opt/tritonserver/backends"]
    for d in candidates:
        if d and Path(d).is_dir():
            return {p.name for p in Path(d).iterdir() if p.is_dir()}
    return set()


def validate_version(model_dir: Path, version: int) -> ModelManifest:
    """Refuses a version folder Triton should not load: hash mismatch, a graph onnx.checker rejects,
    or graph inputs/outputs that differ from the manifest's names and dtypes."""
    import onnx

    folder = model_dir / str(version)
    try:
        manifest = read_manifest(folder)
    except ManifestError as exc:
        raise TritonRepoError(f"{model_dir.name} v{version} refused: {exc}") from exc
    if manifest.name != model_dir.name or manifest.version != version:
        raise TritonRepoError(f"{folder}: manifest names {manifest.name}/{manifest.version}, folder is "
                              f"{model_dir.name}/{version}")
    path = folder / manifest.model_file
    try:
        graph = onnx.load(str(path))
        onnx.checker.check_model(graph)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, ... for corrupt files
        raise TritonRepoError(f"{path}: not a valid ONNX model ({type(exc).__name__}: {exc})") from exc
    init = {i.name for i in graph.graph.initializer}
    for kind, declared, actual in (("input", manifest.inputs, [i for i in graph.graph.input if i.name not in init]),
                                   ("output", manifest.outputs, list(graph.graph.output))):
        got = {v.name: _ONNX_DTYPES.get(v.type.tensor_type.elem_type, "?") for v in actual}
        want = {t.name: t.dtype for t in declared}
        if got != want:
            raise TritonRepoError(f"{path}: graph {kind}s {got} differ from the manifest's {want}")
    return manifest


def _batch_major(manifest: ModelManifest) -> bool:
    return all(t.shape and t.shape[0] == "batch" for t in (*manifest.inputs, *manifest.outputs))


def render_config(name: str, manifests: Sequence[ModelManifest], *, target: str,
                  config: TritonModelConfig = TritonModelConfig()) -> str:
    """`config.pbtxt` text. All listed versions must share tensor names, dtypes and shapes: Triton has
    one config per model, so a schema change needs a new model name, not a new version."""
    if target not in ("native", "python"):
        raise TritonRepoError(f"render_config needs a resolved target, got {target!r}")
    if not manifests:
        raise TritonRepoError(f"{name}: no valid version to serve")
    first = manifests[0]
    for m in manifests[1:]:
        if (m.inputs, m.outputs) != (first.inputs, first.outputs):
            raise TritonRepoError(f"{name} v{m.version} has tensors that differ from v{first.version}'s: "
                                  "export it under a new model name")
    batched = config.max_batch_size > 0 and _batch_major(first)
    lines = [f'name: "{name}"', f'backend: "{"onnxruntime" if target == "native" else "python"}"',
             f"max_batch_size: {config.max_batch_size if batched else 0}"]
    if config.version_policy == "all":
        lines.append("version_policy: { all: {} }")
    else:
        versions = ", ".join(str(m.version) for m in sorted(manifests, key=lambda m: m.version))
        lines.append(f"version_policy: {{ specific: {{ versions: [ {versions} ] }} }}")
    for section, tensors in (("input", first.inputs), ("output", first.outputs)):
        lines.append(f"{section} [")
        entries = []
        for t in tensors:
            if t.dtype not in _TRITON_DTYPES:
                raise TritonRepoError(f"{name}: tensor {t.name} has dtype {t.dtype} with no Triton type")
            shape = list(t.shape[1:] if batched else t.shape)
            dims = [d if isinstance(d, int) else -1 for d in shape]
            # a per-row scalar output [batch] is declared as [1] and reshaped to the graph's []
            reshape = " reshape: { shape: [ ] }" if batched and not dims else ""
            entries.append(f'  {{ name: "{t.name}" data_type: {_TRITON_DTYPES[t.dtype]} '
                           f"dims: [ {', '.join(map(str, dims or [1]))} ]{reshape} }}")
        lines.append(",\n".join(entries))
        lines.append("]")
    if batched:
        preferred = ", ".join(str(b) for b in config.preferred_batch_sizes if b <= config.max_batch_size)
        lines.append(f"dynamic_batching {{ preferred_batch_size: [ {preferred} ] "
                     f"max_queue_delay_microseconds: {config.max_queue_delay_us} }}")
    lines.append(f"instance_group [ {{ count: {config.instance_count} kind: {instance_kind(config, target)} }} ]")
    if target == "native":
        lines.append(f'default_model_filename: "{first.model_file}"')
    return "\n".join(lines) + "\n"


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_triton_model(repository: str | Path, name: str, *, versions: Iterable[int] | None = None,
                       target: str = "python", config: TritonModelConfig = TritonModelConfig(),
                       backend_directory: str | Path | None = None) -> Path:
    """Validates `versions` (default: every numbered folder) and writes `<repo>/<name>/config.pbtxt`
    plus, for the python target, `model.py` in each version folder. Returns the config path.

    Raises TritonRepoError naming the first bad version; nothing is written then, so the server keeps
    the config (and versions) it already serves."""
    model_dir = Path(repository) / name
    if not model_dir.is_dir():
        raise TritonRepoError(f"{model_dir}: no such model folder (export the model first)")
    if versions is None:
        versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    versions = sorted(set(int(v) for v in versions))
    resolved = resolve_target(target, backend_directory)
    manifests = [validate_version(model_dir, v) for v in versions]
    text = render_config(name, manifests, target=resolved, config=config)
    if resolved == "python":
        for m in manifests:
            _write_atomic(model_dir / str(m.version) / PYTHON_MODEL_FILE, PYTHON_MODEL_SOURCE)
    config_path = model_dir / CONFIG_FILE
    _write_atomic(config_path, text)
    return config_path


# The python target's model.py, written into each version folder. It reads only its own folder (the
# manifest and the file it names) and re-checks the manifest's seal, that model_file stays in the folder,
# and the model's hash, so a file corrupted after the config was written fails that version's load while
# the loaded versions keep serving.
PYTHON_MODEL_SOURCE = '''"""Generated by exporters.triton_repo (python target): serves this folder's model.onnx with
onnxruntime. The dynamic batcher's requests are concatenated and run once, outputs split back; a
request that fails alone gets its own error instead of failing the batch."""

import hashlib
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _error(message):
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    return pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)


class TritonPythonModel:
    def initialize(self, args):
        folder = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(folder, "manifest.json")) as fh:
            manifest = json.load(fh)
        body = json.dumps({k: v for k, v in manifest.items() if k != "manifest_sha256"}, sort_keys=True,
                          separators=(",", ":"))
        if hashlib.sha256(body.encode()).hexdigest() != manifest.get("manifest_sha256"):
            raise RuntimeError(f"{folder}: manifest_sha256 does not match the manifest, refusing to load")
        path = os.path.realpath(os.path.join(folder, manifest["model_file"]))
        if os.path.commonpath([path, os.path.realpath(folder)]) != os.path.realpath(folder):
            raise RuntimeError(f"{folder}: model_file {manifest['model_file']!r} leaves the version folder")
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        if digest.hexdigest() != manifest["sha256"]:
            raise RuntimeError(f"{path}: sha256 {digest.hexdigest()[:12]} does not match the manifest's "
                               f"{manifest['sha256'][:12]}: corrupt or replaced model file, refusing to load")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # several instances / servers share the cores
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        self.inputs = {t["name"]: np.dtype(t["dtype"]) for t in manifest["inputs"]}
        self.outputs = [t["name"] for t in manifest["outputs"]]
        self.batched = json.loads(args["model_config"]).get("max_batch_size", 0) > 0
        self.name = f"{manifest['name']}/{manifest['version']}"

    def _feeds(self, request):
        feeds = {}
        for name, dtype in self.inputs.items():
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                return _error(f"{self.name}: input {name} missing")
            array = tensor.as_numpy()
            if array.dtype != dtype:
                return _error(f"{self.name}: input {name} has dtype {array.dtype}, expected {dtype}")
            feeds[name] = array
        return feeds

    def _respond(self, outputs):
        tensors = [pb_utils.Tensor(n, np.ascontiguousarray(o.reshape(-1, 1) if self.batched else o))
                   for n, o in zip(self.outputs, outputs)]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def execute(self, requests):
        feeds = [self._feeds(r) for r in requests]
        good = [i for i, f in enumerate(feeds) if isinstance(f, dict)]
        results = {}
        if self.batched and len(good) > 1:
            first = next(iter(self.inputs))
            try:
                merged = {n: np.concatenate([feeds[i][n] for i in good]) for n in self.inputs}
                outs = self.session.run(self.outputs, merged)
                cuts = np.cumsum([len(feeds[i][first]) for i in good])[:-1]
                pieces = [np.split(o, cuts) for o in outs]
                results = {i: [p[k] for p in pieces] for k, i in enumerate(good)}
            except Exception:  # one bad request (e.g. an index out of range): run them one by one
                results = {}
        responses = []
        for i, f in enumerate(feeds):
            if not isinstance(f, dict):
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=f))
                continue
            if i not in results:
                try:
                    results[i] = self.session.run(self.outputs, f)
                except Exception as exc:
                    responses.append(pb_utils.InferenceResponse(output_tensors=[], error=_error(f"{self.name}: {exc}")))
                    continue
            responses.append(self._respond(results[i]))
        return responses

    def finalize(self):
        self.session = None
'''
