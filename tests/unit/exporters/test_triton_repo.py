"""config.pbtxt generation (parsed back with Triton's own ModelConfig proto) and write-time refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from exporters.manifest import read_manifest, seal_manifest, sha256_file
from exporters.onnx_export import export_onnx
from exporters.triton_repo import (
    TritonModelConfig,
    TritonRepoError,
    render_config,
    resolve_target,
    write_triton_model,
)
from models.features import FeatureSpec
from models.vm import VerticalModel, VMConfig

SPEC = FeatureSpec((30, 8, 12, 6, 6, 4, 24, 5))


def _export(repo: Path, name: str, version: int, config: VMConfig = VMConfig(embed_dim=4, hidden=(8,))) -> Path:
    torch.manual_seed(version)
    model = VerticalModel(SPEC, config)
    ckpt = repo.parent / f"{name}_{version}.pt"
    torch.save({"state_dict": model.state_dict(), "feature_spec": SPEC.to_dict(), "vm_config": config.to_dict()}, ckpt)
    return export_onnx(ckpt, repo, name, version, parity_examples=200, torchscript=False)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("triton_repo") / "models"
    for v in (1, 2):
        _export(repo, "vm", v)
    return repo


def _parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_python_target_config_and_model_py(repo):
    cfg = TritonModelConfig(max_batch_size=512, preferred_batch_sizes=(200, 400, 800), max_queue_delay_us=250,
                            instance_count=2, kind="KIND_CPU")
    parsed = _parse(write_triton_model(repo, "vm", target="python", config=cfg))
    assert parsed.name == "vm" and parsed.backend == "python" and parsed.max_batch_size == 512
    assert list(parsed.version_policy.specific.versions) == [1, 2]
    assert [(i.name, i.data_type, list(i.dims)) for i in parsed.input] == [
        ("sparse", model_config_pb2.TYPE_INT64, [8]), ("recent", model_config_pb2.TYPE_INT64, [5]),
        ("dense", model_config_pb2.TYPE_FP32, [4])]
    assert [(o.name, list(o.dims), list(o.reshape.shape)) for o in parsed.output] == [
        ("p_ctr", [1], []), ("p_cvr", [1], [])]
    assert list(parsed.dynamic_batching.preferred_batch_size) == [200, 400]  # 800 > max_batch_size dropped
    assert parsed.dynamic_batching.max_queue_delay_microseconds == 250
    assert [(g.count, g.kind) for g in parsed.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
    for v in (1, 2):
        source = (repo / "vm" / str(v) / "model.py").read_text()
        compile(source, "model.py", "exec")
        assert "class TritonPythonModel" in source and "intra_op_num_threads = 1" in source


def test_native_target_and_all_policy(repo):
    text = render_config("vm", [read_manifest(repo / "vm" / "1")], target="native",
                         config=TritonModelConfig(version_policy="all", kind="KIND_GPU"))
    parsed = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert parsed.backend == "onnxruntime" and parsed.default_model_filename == "model.onnx"
    assert parsed.version_policy.HasField("all")
    assert parsed.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU


def test_history_model_is_not_batched(tmp_path):
    repo = tmp_path / "models"
    _export(repo, "vm_loopfm", 1, VMConfig(embed_dim=4, hidden=(8,), history_dim=4, history_len=6))
    parsed = _parse(write_triton_model(repo, "vm_loopfm", target="python"))
    # per-user histories are not batch-major: the dynamic batcher cannot concatenate them
    assert parsed.max_batch_size == 0 and not parsed.HasField("dynamic_batching")
    dims = {i.name: list(i.dims) for i in parsed.input}
    assert dims["fm_history"] == [-1, 6, 4] and dims["user_index"] == [-1] and dims["sparse"] == [-1, 8]


def test_auto_target_probes_backend_directory(tmp_path):
    (tmp_path / "python").mkdir()
    assert resolve_target("auto", tmp_path) == "python"
    (tmp_path / "onnxruntime").mkdir()
    assert resolve_target("auto", tmp_path) == "native"
    assert resolve_target("native") == "native"
    with pytest.raises(TritonRepoError, match="target"):
        resolve_target("tensorrt")


def _copy_version(repo: Path, src: int, dst: int) -> Path:
    import shutil

    folder = repo / "vm" / str(dst)
    shutil.copytree(repo / "vm" / str(src), folder)
    (folder / "model.py").unlink(missing_ok=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["version"] = dst
    (folder / "manifest.json").write_text(json.dumps(seal_manifest(manifest)))
    return folder


def _rehash(folder: Path, **changes) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(sha256=sha256_file(folder / "model.onnx"), **changes)
    (folder / "manifest.json").write_text(json.dumps(seal_manifest(manifest)))


@pytest.mark.parametrize(("damage", "message"), [
    ("flip", r"vm v3 refused: .*sha256"),
    ("garbage_rehashed", "not a valid ONNX model"),
    ("renamed_input", "graph inputs .* differ from the manifest"),
    ("wrong_version", "manifest names vm/7"),
])
def test_corrupt_or_mismatched_version_refused_without_writing(repo, damage, message):
    config_path = write_triton_model(repo, "vm", versions=[1, 2], target="python")
    before = config_path.read_text()
    folder = _copy_version(repo, 1, 3)
    try:
        model = folder / "model.onnx"
        if damage == "flip":
            data = bytearray(model.read_bytes())
            data[len(data) // 2] ^= 0xFF
            model.write_bytes(bytes(data))
        elif damage == "garbage_rehashed":
            model.write_bytes(b"not a protobuf at all" * 10)
            _rehash(folder)
        elif damage == "renamed_input":
            manifest = json.loads((folder / "manifest.json").read_text())
            manifest["inputs"][0]["name"] = "sparse_ids"
            (folder / "manifest.json").write_text(json.dumps(seal_manifest(manifest)))
        else:
            _rehash(folder, version=7)
        with pytest.raises(TritonRepoError, match=message):
            write_triton_model(repo, "vm", target="python")
        assert config_path.read_text() == before
        assert not (folder / "model.py").exists()
    finally:
        import shutil

        shutil.rmtree(folder)


def test_versions_with_different_tensors_refused(tmp_path):
    repo = tmp_path / "models"
    _export(repo, "vm", 1)
    _export(repo, "vm", 2, VMConfig(embed_dim=4, hidden=(8,), history_dim=4, history_len=6))
    with pytest.raises(TritonRepoError, match="new model name"):
        write_triton_model(repo, "vm", target="python")


def test_bad_arguments():
    with pytest.raises(TritonRepoError, match="kind"):
        TritonModelConfig(kind="KIND_TPU")
    with pytest.raises(TritonRepoError, match="no such model"):
        write_triton_model("/nonexistent", "vm")
