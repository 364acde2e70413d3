"""Session fixtures for the Triton suites: tiny VMs exported as two versions, a python-target Triton
repository over them, and a real tritonserver started through our launcher.

Import the fixtures into a test module (`triton_server = triton_fixtures.triton_server`). Models are
built with random weights, not trained: the serving path is under test, not model quality, and two
seeds give two versions whose outputs differ.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

MODEL = "vm_triton"
LOOPFM_MODEL = "vm_triton_loopfm"  # per-user FM history inputs: served unbatched (max_batch_size 0)
SPEC_SIZES = (40, 12, 16, 8, 6, 4, 24, 5)


def tiny_checkpoint(path: Path, seed: int, *, history: bool = False) -> Path:
    """A VerticalModel with random weights (seeded), saved in the format `load_checkpoint` reads."""
    import torch

    from models.features import FeatureSpec
    from models.vm import VerticalModel, VMConfig

    torch.manual_seed(seed)
    spec = FeatureSpec(SPEC_SIZES, recent_k=5, dense_width=4)
    extra = {"history_dim": 4, "history_len": 6} if history else {}
    config = VMConfig(embed_dim=4, cross_layers=1, hidden=(16,), **extra)
    model = VerticalModel(spec, config)
    with torch.no_grad():  # spread the heads so versions differ visibly
        model.ctr_head.bias.fill_(float(seed) * 0.5 - 1.0)
    payload = {"state_dict": model.state_dict(), "feature_spec": spec.to_dict(), "vm_config": config.to_dict(),
               "metrics": {"seed": seed}, "fm_version": "none", "source": "random-weights"}
    torch.save(payload, path)
    return path


def export_version(repo: Path, ckpt_dir: Path, version: int, *, seed: int | None = None, name: str = MODEL) -> Path:
    from exporters.onnx_export import export_onnx

    history = name == LOOPFM_MODEL
    ckpt = tiny_checkpoint(ckpt_dir / f"{name}_v{version}.pt", seed if seed is not None else version, history=history)
    return export_onnx(ckpt, repo, name, version, parity_examples=2_000, torchscript=False)


def sample_inputs(batch: int, seed: int = 0, *, history: bool = False) -> dict[str, np.ndarray]:
    from exporters.onnx_export import example_inputs
    from models.features import FeatureSpec
    from models.vm import VMConfig

    config = VMConfig(history_dim=4, history_len=6) if history else None
    return example_inputs(FeatureSpec(SPEC_SIZES, recent_k=5, dense_width=4), batch, seed=seed, config=config)


@pytest.fixture(scope="session")
def triton_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`<repo>/vm_triton/{1,2}` and `<repo>/vm_triton_loopfm/1`, with python-target configs."""
    from exporters.triton_repo import write_triton_model

    base = tmp_path_factory.mktemp("triton")
    repo = base / "model_repository"
    for v in (1, 2):
        export_version(repo, base, v)
    export_version(repo, base, 1, name=LOOPFM_MODEL)
    write_triton_model(repo, MODEL, target="python")
    write_triton_model(repo, LOOPFM_MODEL, target="python")
    return repo


@pytest.fixture(scope="session")
def triton_server(triton_repo: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real tritonserver (the nvidia-pytriton bundle) serving `triton_repo`; stopped at session end
    with its /dev/shm files removed."""
    if importlib.util.find_spec("pytriton") is None:
        pytest.skip("nvidia-pytriton (the 'triton' extra) is not installed: pip install -e '.[triton]'")
    from serving.triton import launcher

    state = tmp_path_factory.mktemp("triton_state")
    handle = launcher.start(triton_repo, models=[MODEL, LOOPFM_MODEL], state_dir=state)
    try:
        yield handle
    finally:
        launcher.stop(handle)
        leftovers = list(Path("/dev/shm").glob(f"{handle.shm_prefix}*"))
        assert not leftovers, f"shared-memory files left behind: {leftovers}"
