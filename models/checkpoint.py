"""Checkpoint files of the VM and the FM: written atomically, read without unpickling objects.

A checkpoint is a dict of tensors and plain data (str, int, float, bool, None, lists, tuples, dicts).
`torch.load(weights_only=True)` reads exactly that and refuses anything else, so a crafted file given to
`adrank export`, `adrank embed` or `adrank train vm` cannot run code. `save_atomic` turns numpy scalars and
other JSON-able leaves into plain Python first, so every checkpoint this project writes loads that way.

Usage::

    save_atomic({"state_dict": model.state_dict(), "metrics": {...}}, "runs/x/vm.pt")
    payload = load_payload("runs/x/vm.pt")   # CheckpointError if unreadable or if it carries pickled objects
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or carries something other than tensors and plain data."""


def _plain(value: object) -> object:
    """Tensors stay; containers are rebuilt; numpy scalars and arrays become Python numbers and lists."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_plain(v) for v in value) if isinstance(value, tuple) else [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise CheckpointError(f"checkpoint value of type {type(value).__name__} is not tensors or plain data")


def save_atomic(payload: Mapping, path: str | Path) -> Path:
    """torch.save of the plain form of `payload` to a temp file, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    plain = {k: (v if k.endswith("state_dict") or k.endswith("_state") else _plain(v)) for k, v in payload.items()}
    torch.save(plain, tmp)
    tmp.replace(path)
    return path


def load_payload(path: str | Path) -> dict:
    """The checkpoint's dict, loaded with weights_only=True; CheckpointError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused, the file carries pickled objects beyond tensors and plain data "
            f"(only weights_only checkpoints are loaded): {str(exc).splitlines()[0]}") from exc
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from exc
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: a checkpoint is a dict, got {type(payload).__name__}")
    return payload
