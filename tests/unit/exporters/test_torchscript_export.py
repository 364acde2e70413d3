"""TorchScript export beside ONNX: parity against eager PyTorch on 10k examples, recorded in the manifest."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exporters.manifest import read_manifest, sha256_file
from exporters.onnx_export import example_inputs, export_onnx
from exporters.parity import max_errors
from exporters.torchscript_export import TorchScriptExportError, export_torchscript
from models.features import FeatureSpec
from models.vm import VerticalModel, VMConfig

SPEC = FeatureSpec((30, 8, 12, 6, 6, 4, 24, 5))


def _checkpoint(path, config: VMConfig, seed: int = 0):
    torch.manual_seed(seed)
    model = VerticalModel(SPEC, config)
    torch.save({"state_dict": model.state_dict(), "feature_spec": SPEC.to_dict(), "vm_config": config.to_dict(),
                "metrics": {}, "fm_version": "none", "source": "test"}, path)
    return path, model


@pytest.mark.filterwarnings("ignore:.*torch.jit.load.*:DeprecationWarning")
def test_export_writes_model_pt_with_parity_in_manifest(tmp_path):
    ckpt, model = _checkpoint(tmp_path / "vm.pt", VMConfig(embed_dim=4, hidden=(16,)))
    folder = export_onnx(ckpt, tmp_path / "repo", "vm", 1, parity_examples=10_000)
    manifest = read_manifest(folder)
    ts = manifest.parity["torchscript"]
    print(f"\nparity on 10k: onnx max_abs {manifest.parity['max_abs']:.2e} max_rel {manifest.parity['max_rel']:.2e}; "
          f"torchscript max_abs {ts['max_abs']:.2e} max_rel {ts['max_rel']:.2e}")
    assert ts["n"] == 10_000 and ts["max_abs"] <= 1e-5 and ts["max_rel"] <= 1e-4
    assert ts["file"] == "model.pt" and ts["sha256"] == sha256_file(folder / "model.pt")
    scripted = torch.jit.load(str(folder / "model.pt"))
    x = example_inputs(SPEC, 300, seed=9)
    with torch.no_grad():
        got = scripted(*(torch.from_numpy(x[k]) for k in ("sparse", "recent", "dense")))
        ref = model.eval()(*(torch.from_numpy(x[k]) for k in ("sparse", "recent", "dense")))
    assert max_errors([g.numpy() for g in got], [r.numpy() for r in ref])["max_abs"] <= 1e-6


def test_loopfm_vm_traces_with_per_user_history(tmp_path):
    config = VMConfig(embed_dim=4, hidden=(8,), history_dim=4, history_len=6)
    _, model = _checkpoint(tmp_path / "vm.pt", config)
    figures = export_torchscript(model.eval(), tmp_path / "model.pt",
                                 trace_inputs=example_inputs(SPEC, 8, config=config),
                                 parity_inputs=example_inputs(SPEC, 2_000, seed=1, config=config))
    assert figures["max_abs"] <= 1e-5 and figures["n"] == 2_000


def test_parity_over_threshold_is_refused(tmp_path):
    _, model = _checkpoint(tmp_path / "vm.pt", VMConfig(embed_dim=4, hidden=(8,)))
    x = example_inputs(SPEC, 100)
    with pytest.raises(TorchScriptExportError, match="parity failed"):
        export_torchscript(model.eval(), tmp_path / "model.pt", trace_inputs=x, parity_inputs=x, atol=-1.0)


def test_max_errors_reports_abs_rel_and_count():
    out = max_errors([np.array([0.5, 0.3], np.float32)], [np.array([0.5, 0.2], np.float32)])
    assert out["n"] == 2 and out["max_abs"] == pytest.approx(0.1, abs=1e-7)
    assert out["max_rel"] == pytest.approx(0.5, rel=1e-6)
    with pytest.raises(ValueError, match="shape"):
        max_errors([np.zeros(2)], [np.zeros(3)])
