import numpy as np
import pytest

from models.metrics import auc, calibration, normalized_entropy, transfer_ratio


def test_auc_matches_pairwise_definition_with_ties():
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.3
    s = np.round(rng.random(300), 1)  # many ties
    pos, neg = s[y], s[~y]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert auc(y, s) == pytest.approx(pairwise, abs=1e-12)
    assert auc(y, s.max() - s) == pytest.approx(1 - pairwise, abs=1e-12)


def test_auc_undefined_without_both_classes():
    assert np.isnan(auc(np.ones(5), np.arange(5)))


def test_ne_is_one_for_the_base_rate_and_lower_for_better_predictions():
    rng = np.random.default_rng(1)
    p = rng.random(50_000) * 0.5
    y = rng.random(50_000) < p
    assert normalized_entropy(y, np.full(len(y), y.mean())) == pytest.approx(1.0, abs=1e-9)
    assert normalized_entropy(y, p) < 0.97
    assert calibration(y, p) == pytest.approx(1.0, abs=0.03)
    assert calibration(y, 2 * p) == pytest.approx(2.0, abs=0.06)


def test_transfer_ratio():
    assert transfer_ratio(0.90, 0.88, 0.80) == pytest.approx(0.2)
    assert np.isnan(transfer_ratio(0.90, 0.88, 0.95))
