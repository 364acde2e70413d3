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
