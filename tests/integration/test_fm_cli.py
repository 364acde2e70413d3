"""`adrank train fm` then `adrank embed`: codes for every event of a split land in the embedding cache
under the FM's own version, and are read back strictly before each event's time."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from embedding_cache import open_reader
from models.data import load_dataset

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "adrank", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def test_train_fm_then_embed_publishes_codes_of_that_fm_version(tmp_path):
    _run("train", "fm", "--events", "10000", "--epochs", "1", "--out", str(tmp_path))
    fm_version = torch.load(tmp_path / "fm.pt", map_location="cpu", weights_only=True)["fm_version"]
    out = _run("embed", "--fm-checkpoint", str(tmp_path / "fm.pt"), "--events", "10000", "--split", "all",
               "--cache-dir", str(tmp_path / "cache"))
    assert f"10,000 codes of {fm_version}" in out

    events = load_dataset("synthetic", n_events=10_000, seed=0)
    reader = open_reader("embedded", tmp_path / "cache", fm_version)
    assert reader.dim == 32
    rows = np.arange(0, len(events), 97)
    hb = reader.user_history(events["user_id"][rows], events["ts_ms"][rows], 16)
    for b, i in enumerate(rows):
        n_before = int(np.sum((events["user_id"] == events["user_id"][i]) & (events["ts_ms"] < events["ts_ms"][i])))
        if n_before == 0:
            assert hb.fallback[b]
        else:
            assert not hb.fallback[b] and hb.lengths[b] == min(16, n_before)
            assert np.all(hb.timestamps[b, :hb.lengths[b]] < events["ts_ms"][i])
            assert np.all(np.abs(hb.codes[b, :hb.lengths[b]]) <= 1.0)  # tanh codes, int4 on the grid
