"""ONNX export of a VM checkpoint into `<repository>/<name>/<version>/` with a parity check.

The version folder is assembled in a temporary sibling and renamed into place, so a crash or a
failed parity check never leaves a half-written version that a server could pick up.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from exporters.manifest import MANIFEST_NAME, MODEL_FILE, ModelManifest, TensorSpec, sha256_file
from exporters.torchscript_export import TORCHSCRIPT_FILE, TorchScriptExportError, export_torchscript
from models.features import FeatureSpec
from models.train import load_checkpoint
from models.vm import VerticalModel, VMConfig

OPSET = 17
OUTPUT_NAMES = ("p_ctr", "p_cvr")


class ExportError(RuntimeError):
    """Export refused: bad arguments, an existing version, or a parity check that failed."""


def example_inputs(spec: FeatureSpec, batch: int, seed: int = 0, config: VMConfig | None = None) -> dict[str, np.ndarray]:
    """Random but valid inputs (every index inside its field) for tracing and parity checks. For a
    LoopFM VM, histories of a few users (some empty) in tanh range, shared by the batch's rows."""
    rng = np.random.default_rng(seed)
    offsets = spec.offsets
    sparse = np.stack([rng.integers(0, s + 1, batch) + o for s, o in zip(spec.field_sizes, offsets, strict=True)], 1)
    recent = rng.integers(0, spec.n_categories + 1, (batch, spec.recent_k)) + spec.recent_offset
    dense = rng.normal(0.0, 1.0, (batch, spec.dense_width)).astype(np.float32)
    out = {"sparse": sparse.astype(np.int64), "recent": recent.astype(np.int64), "dense": dense}
    if config is not None and config.history_dim:
        users = max(1, min(batch, 64))
        length = rng.integers(0, config.history_len + 1, users)
        out["fm_history"] = np.tanh(rng.normal(0, 1, (users, config.history_len, config.history_dim))).astype(np.float32)
        out["fm_history_mask"] = (np.arange(config.history_len)[None, :] < length[:, None]).astype(np.float32)
        out["user_index"] = rng.integers(0, users, batch).astype(np.int64)
    return out


def input_specs(spec: FeatureSpec, config: VMConfig) -> tuple[TensorSpec, ...]:
    specs = [TensorSpec("sparse", "int64", ("batch", spec.n_fields)),
             TensorSpec("recent", "int64", ("batch", spec.recent_k)),
             TensorSpec("dense", "float32", ("batch", spec.dense_width))]
    if config.history_dim:
        specs += [TensorSpec("fm_history", "float32", ("users", config.history_len, config.history_dim)),
                  TensorSpec("fm_history_mask", "float32", ("users", config.history_len)),
                  TensorSpec("user_index", "int64", ("batch",))]
    return tuple(specs)


def parity(model: VerticalModel, onnx_path: Path, inputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Max absolute / relative difference between eager PyTorch and onnxruntime on `inputs`."""
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(list(OUTPUT_NAMES), inputs)
    with torch.no_grad():
        ref = model(*(torch.from_numpy(inputs[k]) for k in model.config.input_names))
    abs_err = max(float(np.max(np.abs(g - r.numpy()))) for g, r in zip(got, ref, strict=True))
    rel_err = max(float(np.max(np.abs(g - r.numpy()) / np.maximum(np.abs(r.numpy()), 1e-6)))
                  for g, r in zip(got, ref, strict=True))
    return {"max_abs": abs_err, "max_rel": rel_err, "n": int(len(inputs["dense"]))}


def export_onnx(checkpoint: str | Path, repository: str | Path, name: str, version: int, *,
                parity_examples: int = 10_000, atol: float = 1e-5, torchscript: bool = True) -> Path:
    """Exports `checkpoint` as `<repository>/<name>/<version>/model.onnx` + manifest.json, and with
    `torchscript` also `model.pt` (its parity figures and sha256 under the manifest's parity.torchscript)."""
    if version < 1:
        raise ExportError(f"version must be >= 1, got {version}")
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ExportError(f"model name {name!r} must be non-empty and use only letters, digits, '-' and '_'")
    target = Path(repository) / name / str(version)
    if target.exists():
        raise ExportError(f"{target} already exists: versions are immutable, export a new version number")
    model, payload = load_checkpoint(checkpoint)
    spec, config = model.spec, model.config
    names = config.input_names
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.staging-", dir=target.parent))
    try:
        onnx_path = staging / MODEL_FILE
        trace = example_inputs(spec, 8, config=config)
        axes = {n: {0: "users" if n in ("fm_history", "fm_history_mask") else "batch"} for n in (*names, *OUTPUT_NAMES)}
        with warnings.catch_warnings():
            # the TorchScript-based exporter is chosen on purpose (stable opset-17 graphs with dynamic
            # axes); its deprecation notice is not actionable for users of this tool
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model, tuple(torch.from_numpy(trace[k]) for k in names), str(onnx_path),
                input_names=list(names), output_names=list(OUTPUT_NAMES), opset_version=OPSET, dynamo=False,
                dynamic_axes=axes,
            )
        parity_inputs = example_inputs(spec, parity_examples, seed=1, config=config)
        check = parity(model, onnx_path, parity_inputs)
        if check["max_abs"] > atol:
            raise ExportError(f"ONNX parity failed: max abs error {check['max_abs']:.2e} > {atol:.0e}")
        if torchscript:
            try:
                ts = export_torchscript(model, staging / TORCHSCRIPT_FILE, trace_inputs=trace,
                                        parity_inputs=parity_inputs, atol=atol)
            except TorchScriptExportError as exc:
                raise ExportError(str(exc)) from exc
            check = {**check, "torchscript": {**ts, "file": TORCHSCRIPT_FILE,
                                              "sha256": sha256_file(staging / TORCHSCRIPT_FILE)}}
        manifest = ModelManifest(
            name=name, version=version, fm_version=str(payload.get("fm_version", "none")),
            feature_spec=spec.to_dict(),
            inputs=input_specs(spec, config),
            outputs=tuple(TensorSpec(o, "float32", ("batch",)) for o in OUTPUT_NAMES),
            opset=OPSET, source=str(payload.get("source", "")), metrics=payload.get("metrics", {}), parity=check,
            history=payload.get("history", {}),
        )
        manifest = replace(manifest, sha256=sha256_file(onnx_path))
        (staging / MANIFEST_NAME).write_text(manifest.to_json())
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
