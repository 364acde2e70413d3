"""Versions for rollout tests, made from an exported one without retraining: a copy under a new version
number (same scores: a good canary), one whose p_ctr is scaled (a deliberately bad canary), or one whose
manifest names another fm_version. Each is a real sealed export the server verifies and loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
from onnx import helper, numpy_helper

from exporters.manifest import MANIFEST_NAME, seal_manifest, sha256_file


def scale_p_ctr(model_path: Path, factor: float) -> None:
    """Rewrites the graph so its p_ctr output is factor × the original, capped at 1 (biased scores)."""
    import numpy as np

    model = onnx.load(str(model_path))
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["p_ctr_unscaled" if o == "p_ctr" else o for o in node.output]
    graph.initializer.extend([numpy_helper.from_array(np.array(factor, np.float32), "p_ctr_factor"),
                              numpy_helper.from_array(np.array(1.0, np.float32), "p_ctr_cap")])
    graph.node.extend([helper.make_node("Mul", ["p_ctr_unscaled", "p_ctr_factor"], ["p_ctr_scaled"]),
                       helper.make_node("Min", ["p_ctr_scaled", "p_ctr_cap"], ["p_ctr"])])
    onnx.checker.check_model(model)
    onnx.save(model, str(model_path))


def copy_version(repo: Path, name: str, src: int, dst: int, *, new_name: str | None = None,
                 p_ctr_factor: float | None = None, fm_version: str | None = None) -> Path:
    """`<repo>/<new_name or name>/<dst>` as a copy of `<repo>/<name>/<src>`, resealed; written beside the
    target and renamed into place, so a scanning server never sees it half-written."""
    target_name = new_name or name
    target = repo / target_name / str(dst)
    staging = repo / target_name / f".{dst}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(repo / name / str(src), staging)
    for extra in ("model.pt",):  # only the ONNX graph is served; a stale TorchScript copy would mislead
        (staging / extra).unlink(missing_ok=True)
    manifest = json.loads((staging / MANIFEST_NAME).read_text())
    if p_ctr_factor is not None:
        scale_p_ctr(staging / manifest["model_file"], p_ctr_factor)
        manifest["sha256"] = sha256_file(staging / manifest["model_file"])
    manifest["parity"] = {k: v for k, v in manifest.get("parity", {}).items() if k != "torchscript"}
    manifest["name"], manifest["version"] = target_name, dst
    if fm_version is not None:
        manifest["fm_version"] = fm_version
        if manifest.get("history"):
            manifest["history"] = {**manifest["history"], "fm_version": fm_version}
    (staging / MANIFEST_NAME).write_text(json.dumps(seal_manifest(manifest), indent=2, sort_keys=True))
    staging.rename(target)
    return target
