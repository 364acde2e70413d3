"""The manifest that travels with every exported model version.

Serving trusts nothing but this file and the model file beside it: the feature spec it must build,
the fm_version whose embeddings it may read, input/output names and shapes, and a content hash that
is checked before a model is loaded.

The manifest is sealed too: `manifest_sha256` is the sha256 of its canonical JSON (sorted keys, no
whitespace) without that field, so an edited fm_version, feature spec or model_file is refused just like
a replaced model file. And `model_file` must name a file inside its own version folder (no absolute
path, no `..`, no symlink leading out), so a manifest cannot make serving load another version's or
another directory's file. Both checks guard against damage and mistakes, not against someone who can
rewrite both files: that needs signing (see docs/security.md).

Usage::

    manifest = read_manifest("runs/demo/model_repository/vm/1")   # ManifestError on any mismatch
    text = json.dumps(seal_manifest(edited_dict))                  # re-seal a manifest edited on purpose
"""

from __future__ import annotations

import hashlib
import hmac
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
    manifest_sha256: str = ""
    """sha256 of the canonical JSON of every other field (`manifest_digest`); written by `to_json`."""

    def to_json(self) -> str:
        """The sealed manifest: `manifest_sha256` is recomputed over the other fields as written."""
        return json.dumps(seal_manifest(asdict(self)), indent=2, sort_keys=True)

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
                history=dict(d.get("history", {})), manifest_sha256=str(d.get("manifest_sha256", "")),
            )
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"manifest lacks or mistypes field {exc}") from exc


def manifest_digest(d: Mapping) -> str:
    """sha256 of the canonical JSON of `d` without `manifest_sha256`: sorted keys, no whitespace, and the
    values as JSON reads them back (tuples become lists), so writing and reading agree byte for byte."""
    body = json.loads(json.dumps({k: v for k, v in d.items() if k != "manifest_sha256"}))
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seal_manifest(d: Mapping) -> dict:
    """A copy of `d` with `manifest_sha256` set: for writers, and for tools that edit a manifest on purpose."""
    return {**d, "manifest_sha256": manifest_digest(d)}


def _check_seal(path: Path, d: Mapping) -> None:
    recorded = d.get("manifest_sha256")
    if not recorded:
        raise ManifestError(f"{path}: manifest_sha256 missing (a manifest written before manifests were sealed, "
                            "or edited by hand); re-export this version")
    if not hmac.compare_digest(str(recorded), manifest_digest(d)):
        raise ManifestError(f"{path}: manifest_sha256 does not match the manifest's content (edited or damaged)")


def resolve_model_file(version_dir: Path, model_file: str) -> Path:
    """`version_dir / model_file`, refused unless it stays inside `version_dir` once symlinks are followed:
    a relative path without `..`, not absolute, and not a link pointing out of the folder."""
    rel = Path(model_file)
    if not model_file or rel.is_absolute() or ".." in rel.parts:
        raise ManifestError(f"{version_dir / MANIFEST_NAME}: model_file {model_file!r} must be a relative path "
                            "inside the version folder (no absolute path, no '..')")
    path = version_dir / rel
    root = version_dir.resolve()
    if not path.resolve().is_relative_to(root):
        raise ManifestError(f"{version_dir / MANIFEST_NAME}: model_file {model_file!r} resolves outside the version "
                            f"folder {version_dir} (a symlink leading out)")
    return path


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(version_dir: str | Path, *, verify: bool = True) -> ModelManifest:
    """Reads `<version_dir>/manifest.json` and checks its seal and that `model_file` stays inside the
    folder; with `verify`, also checks the model file's hash against it."""
    version_dir = Path(version_dir)
    path = version_dir / MANIFEST_NAME
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: no manifest") from exc
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise ManifestError(f"{path}: not a JSON object")
    manifest = ModelManifest.from_dict(raw)
    _check_seal(path, raw)
    model_path = resolve_model_file(version_dir, manifest.model_file)
    if verify:
        if not model_path.is_file():
            raise ManifestError(f"{model_path}: model file missing")
        digest = sha256_file(model_path)
        if digest != manifest.sha256:
            raise ManifestError(f"{model_path}: sha256 {digest[:12]}… does not match the manifest's "
                                f"{manifest.sha256[:12]}…")
    return manifest
