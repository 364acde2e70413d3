"""Shared fixtures. Expensive artefacts (a trained tiny model repository) are built once per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained VM on 20k synthetic events, exported as vm v1 into `<run>/model_repository`."""
    from exporters.onnx_export import export_onnx
    from models.pipeline import TrainJob, run_train_job

    out = tmp_path_factory.mktemp("tiny_run")
    _, ckpt = run_train_job(TrainJob(n_events=20_000, seed=0, epochs=1, out_dir=str(out)), progress=False)
    export_onnx(ckpt, out / "model_repository", "vm", 1, parity_examples=2_000)
    return out


@pytest.fixture(scope="session")
def loopfm_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A LoopFM VM (sum pooling over 8-wide codes) trained through the embedded cache, exported as
    `vm_loopfm` v1 (fm_version "fm-test01") and v2 (same graph, manifest naming "fm-absent", whose
    codes the cache lacks). Codes are deterministic functions of (user, time), not FM outputs: the
    serving path, not model quality, is under test here."""
    import json

    import numpy as np

    from embedding_cache import open_reader
    from exporters.manifest import seal_manifest
    from exporters.onnx_export import export_onnx
    from models.catalog import build_catalog, save_catalog
    from models.data import load_dataset
    from models.embed import cache_history, publish_codes
    from models.train import TrainConfig, fit_vm, prepare_vm_data, save_checkpoint
    from models.vm import VMConfig

    out = tmp_path_factory.mktemp("loopfm_run")
    events = load_dataset("synthetic", n_events=20_000, seed=0)
    phase = (events["user_id"][:, None] * 0.37 + events["ts_ms"][:, None] / 8.64e7 + np.arange(8)[None, :])
    codes = np.tanh(np.sin(phase)).astype(np.float32)
    rows = np.arange(len(events))
    publish_codes(out / "cache", "fm-test01", events, rows, codes, codec="int8")
    data = prepare_vm_data(events, TrainConfig(epochs=1))
    data.history = cache_history(open_reader("embedded", out / "cache", "fm-test01"), events, "fm-test01")
    data.fm_version = "fm-test01"
    result = fit_vm(data, VMConfig(history_dim=8, history_len=8), TrainConfig(epochs=1), progress=False)
    history = {"fm_version": "fm-test01", "length": 8, "width": 8, "codec": "int8", "pooling": "sum"}
    ckpt = save_checkpoint(result, out / "vm_loopfm.pt", history=history)
    repo = out / "model_repository"
    export_onnx(ckpt, repo, "vm_loopfm", 1, parity_examples=1_000)
    export_onnx(ckpt, repo, "vm_loopfm", 2, parity_examples=1_000)
    manifest = json.loads((repo / "vm_loopfm" / "2" / "manifest.json").read_text())
    manifest["fm_version"] = "fm-absent"
    (repo / "vm_loopfm" / "2" / "manifest.json").write_text(json.dumps(seal_manifest(manifest)))
    save_catalog(build_catalog(events), out / "catalog.npz")
    return {"dir": out, "repo": repo, "cache": out / "cache", "events": events, "codes": codes}
