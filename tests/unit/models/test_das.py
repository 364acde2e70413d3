"""The DAS log on disk: one FM prediction per unique example, read back by event id, never of another FM."""

from __future__ import annotations

import numpy as np
import pytest

from models.das import DasLogError, read_das, require_logged, write_das
from models.data import load_dataset


def test_round_trip_is_keyed_by_event_id_not_row_order(tmp_path):
    events = load_dataset("synthetic", n_events=10_000, seed=0)
    logits = np.linspace(-2, 2, len(events)).astype(np.float32)
    path = write_das(tmp_path / "das.npz", "fm-a", events["event_id"], logits, source=events.source)
    back = read_das(path, events, "fm-a")
    assert np.array_equal(back, logits)
    shuffled = events.take(np.random.default_rng(0).permutation(len(events)))
    by_id = dict(zip(events["event_id"].tolist(), logits.tolist(), strict=True))
    assert read_das(path, shuffled, "fm-a").tolist() == [np.float32(by_id[i]) for i in shuffled["event_id"].tolist()]
    assert not (tmp_path / "das.npz.tmp").exists()


def test_other_fm_version_or_source_is_refused_and_missing_examples_are_named(tmp_path):
    events = load_dataset("synthetic", n_events=10_000, seed=0)
    half = events.take(np.arange(len(events) // 2))
    path = write_das(tmp_path / "das.npz", "fm-a", half["event_id"], np.zeros(len(half), np.float32),
                     source=events.source)
    with pytest.raises(DasLogError, match="logs 'fm-a'; the VM is trained with 'fm-b'"):
        read_das(path, events, "fm-b")
    logits = read_das(path, events, "fm-a")
    assert np.isnan(logits[len(half):]).all() and not np.isnan(logits[: len(half)]).any()
    with pytest.raises(DasLogError, match="no FM prediction for 5,000 of 10,000"):
        require_logged(logits, np.arange(len(events)), path)
    with pytest.raises(DasLogError, match="NaN or inf"):
        write_das(tmp_path / "bad.npz", "fm-a", np.arange(2), np.array([0.0, np.nan]), source="s")
