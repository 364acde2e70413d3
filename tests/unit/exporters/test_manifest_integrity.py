"""Manifest integrity: the seal covers the manifest itself, and model_file cannot leave its version folder.

Each test tampers with a copy of a real exported version and checks that `read_manifest` (the one entry
point serving, the Triton repository writer and the backends share) refuses it with a ManifestError that
names what is wrong, and that the repository scan skips it while the good version keeps loading.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from exporters.manifest import ManifestError, manifest_digest, read_manifest, seal_manifest
from serving.model_repository import scan


@pytest.fixture
def repo(tiny_run: Path, tmp_path: Path) -> Path:
    """vm v1 as exported, and v2, a copy of it that each test tampers with."""
    root = tmp_path / "repo"
    shutil.copytree(tiny_run / "model_repository" / "vm" / "1", root / "vm" / "1")
    shutil.copytree(root / "vm" / "1", root / "vm" / "2")
    _edit(root / "vm" / "2", version=2)
    return root


def _load(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


def _edit(folder: Path, *, reseal: bool = True, **changes: object) -> None:
    d = {**_load(folder), **changes}
    (folder / "manifest.json").write_text(json.dumps(seal_manifest(d) if reseal else d))


def _refused(repo: Path, match: str) -> None:
    with pytest.raises(ManifestError, match=match):
        read_manifest(repo / "vm" / "2")
    good, bad = scan(repo)
    assert list(good) == [("vm", 1)] and list(bad) == [("vm", 2)], bad


def test_export_seals_the_manifest(repo: Path) -> None:
    d = _load(repo / "vm" / "1")
    assert len(d["manifest_sha256"]) == 64 and d["manifest_sha256"] == manifest_digest(d)
    assert read_manifest(repo / "vm" / "2").version == 2  # a resealed edit is accepted


@pytest.mark.parametrize("field_value", [("fm_version", "fm-other"), ("feature_spec", {}), ("opset", 18),
                                         ("sha256", "0" * 64), ("extra_key", 1)])
def test_editing_any_field_without_resealing_is_refused(repo: Path, field_value: tuple[str, object]) -> None:
    name, value = field_value
    _edit(repo / "vm" / "2", reseal=False, **{name: value})
    _refused(repo, "manifest_sha256 does not match")


def test_unsealed_manifest_is_refused(repo: Path) -> None:
    d = _load(repo / "vm" / "2")
    del d["manifest_sha256"]
    (repo / "vm" / "2" / "manifest.json").write_text(json.dumps(d))
    _refused(repo, "manifest_sha256 missing")


def test_whitespace_and_key_order_do_not_matter(repo: Path) -> None:
    d = _load(repo / "vm" / "2")
    (repo / "vm" / "2" / "manifest.json").write_text(json.dumps(dict(reversed(list(d.items()))), indent=7))
    assert read_manifest(repo / "vm" / "2").version == 2


@pytest.mark.parametrize("model_file", ["../1/model.onnx", "/etc/passwd", "sub/../../1/model.onnx", ""])
def test_model_file_outside_the_version_folder_is_refused(repo: Path, model_file: str) -> None:
    _edit(repo / "vm" / "2", model_file=model_file)  # resealed: only the containment rule refuses it
    _refused(repo, "model_file")


def test_absolute_path_into_the_folder_itself_is_refused(repo: Path) -> None:
    folder = repo / "vm" / "2"
    _edit(folder, model_file=str((folder / "model.onnx").resolve()))
    _refused(repo, "model_file .* relative path")


def test_symlink_leading_out_of_the_folder_is_refused(repo: Path) -> None:
    folder = repo / "vm" / "2"
    (folder / "linked.onnx").symlink_to(repo / "vm" / "1" / "model.onnx")
    _edit(folder, model_file="linked.onnx")  # same bytes, so the model hash alone would pass
    _refused(repo, "model_file 'linked.onnx' resolves outside")


def test_symlink_inside_the_folder_is_accepted(repo: Path) -> None:
    folder = repo / "vm" / "2"
    (folder / "renamed.onnx").symlink_to("model.onnx")
    _edit(folder, model_file="renamed.onnx")
    assert read_manifest(folder).model_file == "renamed.onnx"
