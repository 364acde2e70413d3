"""The manifest that travels with every exported model version.

Serving trusts nothing but this file and the model file beside it: the feature spec it must build,
the fm_version whose embeddings it may read, input/output names and shapes, and a content hash that
is checked before a model is loaded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

MANIFEST_NAME = "manifest.json"
MODEL_FILE = "model.onnx"
FORMAT_VERSION = 1


class ManifestError(ValueError):
    """A manifest is missing, unreadable, or does not match the model file beside it."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "int64", "float32"
    shape: tuple[int | str, ...]  # "batch" marks the dynamic axis


@dataclass(frozen=True)
class ModelManifest:
    name: str
    version: int
    fm_version: str
    feature_spec: Mapping
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    model_file: str = MODEL_FILE
    sha256: str = ""
    opset: int = 17
    source: str = ""
    metrics: Mapping = field(default_factory=dict)
    parity: Mapping = field(default_factory=dict)
    history: Mapping = field(default_factory=dict)
    """LoopFM VMs: the codes serving must read (models.history.HistorySpec: fm_version, length, width,
    codec, pooling); empty for a VM without FM history."""
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Mapping) -> ModelManifest:
        try:
            if int(d.get("format_version", 0)) != FORMAT_VERSION:
                raise ManifestError(f"manifest format {d.get('format_version')} is not {FORMAT_VERSION}")
            return cls(
                name=str(d["name"]), version=int(d["version"]), fm_version=str(d["fm_version"]),
                feature_spec=dict(d["feature_spec"]),
                inputs=tuple(TensorSpec(i["name"], i["dtype"], tuple(i["shape"])) for i in d["inputs"]),
                outputs=tuple(TensorSpec(o["name"], o["dtype"], tuple(o["shape"])) for o in d["outputs"]),
                model_file=str(d.get("model_file", MODEL_FILE)), sha256=str(d["sha256"]), opset=int(d["opset"]),
                source=str(d.get("source", "")), metrics=dict(d.get("metrics", {})), parity=dict(d.get("parity", {})),
                history=dict(d.get("history", {})),
            )
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"manifest lacks or mistypes field {exc}") from exc


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(version_dir: str | Path, *, verify: bool = True) -> ModelManifest:
    """Reads `<version_dir>/manifest.json`; with `verify`, checks the model file's hash against it."""
    version_dir = Path(version_dir)
    path = version_dir / MANIFEST_NAME
    try:
        manifest = ModelManifest.from_dict(json.loads(path.read_text()))
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: no manifest") from exc
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from exc
    if verify:
        model_path = version_dir / manifest.model_file
        if not model_path.exists():
            raise ManifestError(f"{model_path}: model file missing")
        digest = sha256_file(model_path)
        if digest != manifest.sha256:
            raise ManifestError(f"{model_path}: sha256 {digest[:12]}… does not match the manifest's {manifest.sha256[:12]}…")
    return manifest
