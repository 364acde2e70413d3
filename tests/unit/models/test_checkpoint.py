"""Checkpoints load with weights_only: a file that carries a pickled object is refused, never executed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.checkpoint import CheckpointError, load_payload, save_atomic
from models.fm_pipeline import load_fm
from models.train import load_checkpoint


class _RunsCode:
    """Unpickling this calls os.system: the classic payload of a crafted checkpoint."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        import os

        return os.system, (f"touch {self.marker}",)


def _crafted(tmp_path, name: str = "vm.pt"):
    marker = tmp_path / "pwned"
    path = tmp_path / name
    torch.save({"state_dict": {}, "vm_config": _RunsCode(str(marker))}, path)
    return path, marker


@pytest.mark.parametrize("loader", [load_payload, load_checkpoint, load_fm])
def test_a_checkpoint_carrying_a_pickled_object_is_refused_and_runs_nothing(tmp_path, loader):
    path, marker = _crafted(tmp_path)
    with pytest.raises(CheckpointError, match="refused, the file carries pickled objects"):
        loader(path)
    assert not marker.exists()


def test_plain_payloads_round_trip_with_numpy_leaves_made_plain(tmp_path):
    payload = {"state_dict": {"w": torch.ones(2)}, "metrics": {"auc": np.float32(0.5), "n": np.int64(3)},
               "curve": [np.float64(1.5)], "shape": (1, 2), "arr": np.arange(3)}
    path = save_atomic(payload, tmp_path / "x.pt")
    back = load_payload(path)
    assert back["metrics"] == {"auc": 0.5, "n": 3} and type(back["metrics"]["n"]) is int
    assert back["curve"] == [1.5] and back["shape"] == (1, 2) and back["arr"] == [0, 1, 2]
    assert torch.equal(back["state_dict"]["w"], torch.ones(2))
    assert not (tmp_path / "x.pt.tmp").exists()


def test_unreadable_and_missing_files_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_payload(tmp_path / "absent.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_payload(bad)
    listed = tmp_path / "list.pt"
    torch.save([1, 2], listed)
    with pytest.raises(CheckpointError, match="is a dict"):
        load_payload(listed)
