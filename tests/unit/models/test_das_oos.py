"""Out-of-sample DAS logs: no example's logged prediction comes from an FM that trained on it."""

from __future__ import annotations

import numpy as np
import pytest

from models.das_oos import MAIN_FM, NOT_LOGGED, LeakError, assert_out_of_sample, out_of_sample_log, user_folds
from models.data.synthetic import SyntheticConfig, generate_synthetic
from models.distill import DistillConfig
from models.fm_pipeline import FMTrainConfig
from models.train import TrainConfig, fit_vm, prepare_vm_data
from models.vm import VMConfig

TINY_FM = FMTrainConfig(history_len=4, epochs=1, batch_size=512, threads=1,
                        fm={"n_layers": 1, "d_model": 8, "n_heads": 2, "hidden_dim": 16, "window": 4})


@pytest.fixture(scope="module")
def data():
    return prepare_vm_data(generate_synthetic(SyntheticConfig(n_events=10_000, seed=5)), TrainConfig(threads=1))


@pytest.fixture(scope="module")
def main_logits(data):
    return np.linspace(-3, 0, len(data.events)).astype(np.float32)  # stands in for the main FM's pass


def test_kfold_log_rows_come_from_the_fm_of_the_other_users(data, main_logits):
    log = out_of_sample_log(data, TINY_FM, "kfold", main_logits=main_logits, folds=2, log=lambda _: None)
    assert_out_of_sample(log)
    users = data.events["user_id"]
    train = data.train_idx
    assert (log.producer[train] == user_folds(users[train], 2)).all()  # a row is logged by its own user's fold
    for fold in (0, 1):
        # the fold's FM trained on no row of any user it logs
        assert np.intersect1d(users[log.trained_on[fold]], users[log.producer == fold]).size == 0
    assert (log.producer[data.test_idx] == MAIN_FM).all()
    np.testing.assert_array_equal(log.logits[data.test_idx], main_logits[data.test_idx])
    assert np.isfinite(log.logits[train]).all() and not np.array_equal(log.logits[train], main_logits[train])


def test_progressive_log_rows_come_from_an_fm_of_earlier_windows_only(data, main_logits):
    log = out_of_sample_log(data, TINY_FM, "progressive", main_logits=main_logits, windows=3, log=lambda _: None)
    assert_out_of_sample(log)
    ts = data.events["ts_ms"]
    for w in (1, 2):
        produced = np.flatnonzero(log.producer == w)
        assert len(produced) and ts[produced].min() >= ts[log.trained_on[w]].max()  # trained strictly before
    first = data.train_idx[log.producer[data.train_idx] == NOT_LOGGED]
    assert abs(len(first) - len(data.train_idx) / 3) <= 1 and np.isnan(log.logits[first]).all()
    assert ts[first].max() <= ts[log.producer == 1].min()  # the unlogged rows are the earliest window


def test_a_leaked_row_is_caught(data, main_logits):
    log = out_of_sample_log(data, TINY_FM, "kfold", main_logits=main_logits, folds=2, log=lambda _: None)
    victim = log.trained_on[0][0]  # a row FM 0 trained on ...
    log.producer[victim] = 0  # ... claimed to be logged by FM 0
    with pytest.raises(LeakError, match="logged by FM 0, which trained on them"):
        assert_out_of_sample(log)


def test_unknown_method_and_too_few_folds_are_refused(data, main_logits):
    with pytest.raises(ValueError, match="must be one of .*got .random."):
        out_of_sample_log(data, TINY_FM, "random", main_logits=main_logits)
    with pytest.raises(ValueError, match="at least 2 folds"):
        out_of_sample_log(data, TINY_FM, "kfold", main_logits=main_logits, folds=1)


def test_kd_distils_only_the_logged_rows(data):
    """An unlogged row contributes no soft-label loss: a log with no training row logged trains the very
    VM label-only training does; a half-logged one trains another."""
    tc = TrainConfig(epochs=1, threads=1, seed=0)
    cfg = VMConfig(history_dim=0)
    rng = np.random.default_rng(0)
    full = rng.normal(-2, 1, len(data.events)).astype(np.float32)
    plain = fit_vm(data, cfg, tc, progress=False).metrics["test"]["ctr_ne"]

    def kd_ne(logits):
        data.fm_logits = logits
        try:
            return fit_vm(data, cfg, tc, DistillConfig(mode="single", weight=2.0), progress=False).metrics["test"]
        finally:
            data.fm_logits = None

    none_logged = full.copy()
    none_logged[data.train_idx] = np.nan
    assert kd_ne(none_logged)["ctr_ne"] == plain
    half = full.copy()
    half[data.train_idx[::2]] = np.nan
    m = kd_ne(half)
    assert np.isfinite(m["ctr_ne"]) and m["ctr_ne"] != plain and m["ctr_ne"] != kd_ne(full)["ctr_ne"]
