"""Reads a model repository laid out like Triton's: `<repo>/<name>/<version>/{model.onnx,manifest.json}`.

Folders whose name is not a positive integer (such as an exporter's staging folders) are ignored, so
a half-written version is never seen.
"""

from __future__ import annotations

from pathlib import Path

from exporters.manifest import ManifestError, ModelManifest, read_manifest


def version_dirs(repository: str | Path, name: str) -> dict[int, Path]:
    model_dir = Path(repository) / name
    if not model_dir.is_dir():
        return {}
    return {int(p.name): p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit() and int(p.name) > 0}


def model_names(repository: str | Path) -> list[str]:
    root = Path(repository)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and version_dirs(root, p.name))


def scan(repository: str | Path) -> tuple[dict[tuple[str, int], ModelManifest], dict[tuple[str, int], str]]:
    """All verified manifests, plus the errors of versions that failed verification (kept, not raised,
    so one corrupt version never stops the others from serving)."""
    good: dict[tuple[str, int], ModelManifest] = {}
    bad: dict[tuple[str, int], str] = {}
    for name in model_names(repository):
        for version, path in sorted(version_dirs(repository, name).items()):
            try:
                manifest = read_manifest(path)
                if manifest.name != name or manifest.version != version:
                    raise ManifestError(f"{path}: manifest says {manifest.name}/{manifest.version}")
                good[(name, version)] = manifest
            except ManifestError as exc:
                bad[(name, version)] = str(exc)
    return good, bad


def next_version(repository: str | Path, name: str) -> int:
    """One above the newest version of `name` in the repository (1 for a new model)."""
    return max(version_dirs(repository, name), default=0) + 1
