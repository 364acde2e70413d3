"""`adrank export`: a VM checkpoint to ONNX (+ TorchScript, parity-checked, sealed manifest) in a model repository."""

from __future__ import annotations

import argparse
from pathlib import Path

from models.paths import DEFAULT_RUN


def _cmd_export(a: argparse.Namespace) -> int:
    from exporters.onnx_export import export_onnx

    repo = Path(a.repository)
    from serving.model_repository import next_version

    version = a.version or next_version(repo, a.name)
    path = export_onnx(a.checkpoint, repo, a.name, version)
    print(f"exported {a.name} v{version} → {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("export", help="export a VM checkpoint to ONNX in a model repository")
    sp.add_argument("--checkpoint", default=f"{DEFAULT_RUN}/vm.pt")
    sp.add_argument("--repository", default=f"{DEFAULT_RUN}/model_repository")
    sp.add_argument("--name", default="vm")
    sp.add_argument("--version", type=int, default=None, help="default: one above the newest")
    sp.set_defaults(func=_cmd_export)
