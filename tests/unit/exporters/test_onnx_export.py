import json

import pytest

from exporters.manifest import ManifestError, read_manifest
from exporters.onnx_export import ExportError, export_onnx
from models.pipeline import CHECKPOINT


def test_export_writes_verified_manifest_with_parity(tiny_run):
    version_dir = tiny_run / "model_repository" / "vm" / "1"
    m = read_manifest(version_dir)
    assert m.name == "vm" and m.version == 1 and m.fm_version == "none"
    assert [i.name for i in m.inputs] == ["sparse", "recent", "dense"]
    assert m.parity["max_abs"] <= 1e-5 and m.parity["n"] == 2_000
    trained = json.loads((tiny_run / "metrics.json").read_text())
    assert m.metrics == trained  # the manifest carries the training run's own figures


def test_versions_are_immutable(tiny_run):
    with pytest.raises(ExportError, match="already exists"):
        export_onnx(tiny_run / CHECKPOINT, tiny_run / "model_repository", "vm", 1)


def test_bad_name_and_version_refused_without_writing(tiny_run, tmp_path):
    with pytest.raises(ExportError, match="version"):
        export_onnx(tiny_run / CHECKPOINT, tmp_path, "vm", 0)
    with pytest.raises(ExportError, match="name"):
        export_onnx(tiny_run / CHECKPOINT, tmp_path, "../evil", 1)
    assert not any(tmp_path.rglob("*.onnx"))


def test_corrupt_model_file_fails_verification(tiny_run, tmp_path):
    import shutil

    dst = tmp_path / "vm" / "1"
    shutil.copytree(tiny_run / "model_repository" / "vm" / "1", dst)
    data = bytearray((dst / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (dst / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ManifestError, match="sha256"):
        read_manifest(dst)
    (dst / "manifest.json").write_text("{not json")
    with pytest.raises(ManifestError, match="JSON"):
        read_manifest(dst)
    (dst / "manifest.json").write_text(json.dumps({"format_version": 1}))
    with pytest.raises(ManifestError, match="lacks"):
        read_manifest(dst)
