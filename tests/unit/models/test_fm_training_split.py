"""The FM's early-stopping slice and the VMs' vertical: which rows each one may use."""

from __future__ import annotations

import numpy as np
import pytest

from models.data.synthetic import SyntheticConfig, generate_synthetic
from models.experiment import vertical_view
from models.fm_pipeline import validation_split
from models.train import TrainConfig, prepare_vm_data


@pytest.fixture(scope="module")
def data():
    return prepare_vm_data(generate_synthetic(SyntheticConfig(n_events=12_000, seed=3)), TrainConfig())


def test_validation_slice_is_the_latest_training_rows_and_disjoint(data) -> None:
    fit, val = validation_split(data, 0.1)
    ts = data.events["ts_ms"]
    assert len(val) == int(len(data.train_idx) * 0.1)
    assert np.intersect1d(fit, val).size == 0
    np.testing.assert_array_equal(np.sort(np.r_[fit, val]), np.sort(data.train_idx))
    assert ts[val].min() >= ts[fit].max()  # validation lies after everything the FM fits
    assert np.intersect1d(val, data.test_idx).size == 0  # and never touches the test rows


def test_validation_slice_can_be_switched_off_and_rejects_nonsense(data) -> None:
    fit, val = validation_split(data, 0.0)
    assert len(val) == 0 and len(fit) == len(data.train_idx)
    with pytest.raises(ValueError, match="validation_fraction"):
        validation_split(data, 1.0)


def test_vertical_view_keeps_only_its_placements_and_shares_features(data) -> None:
    view = vertical_view(data, (0, 1))
    placement = data.events["placement"]
    assert set(np.unique(placement[view.train_idx])) == {0, 1}
    assert set(np.unique(placement[view.test_idx])) == {0, 1}
    inside = np.isin(placement, [0, 1])
    assert len(view.train_idx) == int(inside[data.train_idx].sum())
    assert view.feats is data.feats and view.events is data.events  # one feature pass serves every vertical
    assert len(data.train_idx) > len(view.train_idx)  # the original is untouched


def test_vertical_view_is_a_no_op_with_one_placement() -> None:
    events = generate_synthetic(SyntheticConfig(n_events=10_000, seed=4))
    events["placement"][:] = 0  # like MovieLens: no placement context
    one = prepare_vm_data(events, TrainConfig())
    view = vertical_view(one, (2,))
    np.testing.assert_array_equal(view.train_idx, one.train_idx)
    np.testing.assert_array_equal(view.test_idx, one.test_idx)


@pytest.mark.parametrize(("mode", "knob"), [("single", "weight"), ("aux", "grad_scale")])
def test_kd_strength_is_picked_on_the_validation_slice_and_never_sees_test_rows(data, monkeypatch, mode, knob) -> None:
    """The knob each KD variant gets (λ or β) is chosen by real fits on the training range's latest slice;
    the spy records what every fit trained and was scored on."""
    import models.experiment as experiment
    from models.distill import DistillConfig
    from models.vm import VMConfig

    calls: list[tuple[np.ndarray, np.ndarray, float]] = []
    real_fit = experiment.fit_vm

    def spy(d, cfg, tc, distill, **kw):
        res = real_fit(d, cfg, tc, distill, **kw)
        calls.append((d.train_idx, d.test_idx, getattr(distill, knob), res.metrics["test"]["ctr_ne"]))
        return res

    monkeypatch.setattr(experiment, "fit_vm", spy)
    rng = np.random.default_rng(0)
    with_fm = experiment.replace(data, fm_logits=rng.normal(-2.0, 1.0, len(data.events)).astype(np.float32))
    chosen, scores = experiment.select_kd_strength(with_fm, VMConfig(), TrainConfig(epochs=1), DistillConfig(mode=mode),
                                                   (0.5, 2.0), 0.1)
    fit, val = validation_split(data, 0.1)
    assert [c[2] for c in calls] == [0.5, 2.0]
    for train_rows, scored_rows, _, _ in calls:
        np.testing.assert_array_equal(train_rows, fit)
        np.testing.assert_array_equal(scored_rows, val)
        assert np.intersect1d(np.r_[train_rows, scored_rows], data.test_idx).size == 0
    assert scores == {c[2]: c[3] for c in calls}
    assert getattr(chosen, knob) == min(scores, key=scores.get)
    assert chosen.mode == mode


def test_each_dataset_has_one_split_rule_and_overrides_win() -> None:
    ml = TrainConfig.for_dataset("movielens", seed=2, epochs=5)
    assert (ml.split, ml.test_fraction, ml.seed, ml.epochs) == ("per_user", 0.1, 2, 5)
    assert TrainConfig.for_dataset("synthetic") == TrainConfig()  # one global time cut, last 20%
    assert TrainConfig.for_dataset("taobao", test_fraction=0.3).test_fraction == 0.3
