"""TorchScript export of a VM (`model.pt`), parity-checked against eager PyTorch.

Why TorchScript beside ONNX: Triton's `pytorch` (libtorch) backend serves it without onnxruntime, and
it is the format to fall back on when an operator has no ONNX lowering. The graph is traced (the VM
has no data-dependent control flow) from the same example inputs the ONNX exporter uses, saved,
loaded back, and compared with the eager model on `parity_examples` fresh rows — the saved file,
not the in-memory trace, is what gets checked.

Usage::

    model, _ = load_checkpoint("runs/demo/vm.pt")
    figures = export_torchscript(model, Path("staging/model.pt"))   # raises ExportError over atol
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from exporters.parity import max_errors
from models.vm import VerticalModel

TORCHSCRIPT_FILE = "model.pt"


class TorchScriptExportError(RuntimeError):
    """Tracing failed or the saved TorchScript module disagrees with eager PyTorch beyond `atol`."""


def _run(fn, model: VerticalModel, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        out = fn(*(torch.from_numpy(inputs[k]) for k in model.config.input_names))
    return [t.numpy() for t in out]


def torchscript_parity(model: VerticalModel, path: str | Path, inputs: dict[str, np.ndarray]) -> dict[str, float]:
    """Max abs / rel error of the TorchScript file at `path` against eager `model` on `inputs`."""
    scripted = torch.jit.load(str(path), map_location="cpu")
    scripted.eval()
    return max_errors(_run(scripted, model, inputs), _run(model, model, inputs))


def export_torchscript(model: VerticalModel, path: str | Path, *, trace_inputs: dict[str, np.ndarray],
                       parity_inputs: dict[str, np.ndarray], atol: float = 1e-5) -> dict[str, float]:
    """Traces `model` on `trace_inputs`, saves it to `path`, and returns parity figures on
    `parity_inputs` (`{"max_abs", "max_rel", "n"}`). Raises TorchScriptExportError over `atol`."""
    model.eval()
    example = tuple(torch.from_numpy(trace_inputs[k]) for k in model.config.input_names)
    with warnings.catch_warnings():
        # torch.jit is deprecated in favour of torch.export, but Triton's libtorch backend still
        # loads TorchScript only; the notice is not actionable for users of this tool
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, torch.jit.TracerWarning))
        try:
            traced = torch.jit.trace(model, example, check_trace=False)
        except Exception as exc:  # tracing raises RuntimeError / TypeError depending on the op
            raise TorchScriptExportError(f"torch.jit.trace failed: {exc}") from exc
        torch.jit.save(traced, str(path))
        figures = torchscript_parity(model, path, parity_inputs)
    if not figures["max_abs"] <= atol:  # `not <=` also refuses NaN
        raise TorchScriptExportError(f"TorchScript parity failed: max abs error {figures['max_abs']:.2e} > {atol:.0e} "
                                     f"on {figures['n']} examples")
    return figures
