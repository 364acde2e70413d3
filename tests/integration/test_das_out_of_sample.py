"""`adrank das --out-of-sample kfold`: the log written beside an FM checkpoint holds, for each training
example, a prediction from an FM that did not train on it, and says which FM made it (the progressive log
shares the code path and is held to its no-leak property in tests/unit/models/test_das_oos.py)."""

import subprocess
import sys
from pathlib import Path

import numpy as np

from models.das import das_header, read_das
from models.das_oos import MAIN_FM, user_folds
from models.data import load_dataset
from models.train import TrainConfig, prepare_vm_data

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "adrank", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def test_kfold_log_each_user_is_logged_by_the_fm_that_left_them_out(tmp_path):
    fm_dir = tmp_path
    _run("train", "fm", "--events", "10000", "--epochs", "1", "--out", str(fm_dir))
    out = _run("das", "--out-of-sample", "kfold", "--folds", "2", "--events", "10000",
               "--fm-checkpoint", str(fm_dir / "fm.pt"), "--out", str(fm_dir / "das-kfold.npz"))
    assert "each logged by an FM that did not train on it" in out
    header = das_header(fm_dir / "das-kfold.npz")
    assert header["log"] == "kfold" and header["fm_version"] == das_header(fm_dir / "das.npz")["fm_version"]
    events = load_dataset("synthetic", n_events=10_000, seed=0)
    data = prepare_vm_data(events, TrainConfig.for_dataset("synthetic"))
    with np.load(fm_dir / "das-kfold.npz", allow_pickle=False) as z:
        ids, producer = z["event_id"], z["producer"]
    by_row = producer[np.searchsorted(ids, events["event_id"])]
    train = data.train_idx
    # fold f's FM trained on the training rows of every user outside fold f, so a row logged by f is unseen
    assert (by_row[train] == user_folds(events["user_id"][train], 2)).all()
    assert (by_row[data.test_idx] == MAIN_FM).all()
    oos = read_das(fm_dir / "das-kfold.npz", events, header["fm_version"])
    in_sample = read_das(fm_dir / "das.npz", events, header["fm_version"])
    assert np.isfinite(oos).all()
    np.testing.assert_allclose(oos[data.test_idx], in_sample[data.test_idx], rtol=1e-5, atol=1e-5)
    assert not np.allclose(oos[train], in_sample[train])
