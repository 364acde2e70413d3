"""Paired t intervals over seeds and the verdict a claim earns from its interval."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.stats import HOLDS, INCONCLUSIVE, REVERSED, paired_interval, t_quantile_975, verdict


def test_known_inputs_give_the_textbook_t_interval():
    d = paired_interval([1.0, 2.0, 3.0, 4.0, 5.0])  # mean 3, sd sqrt(2.5), t(0.975, 4) = 2.776
    half = 2.776 * math.sqrt(2.5) / math.sqrt(5)
    assert d.n == 5 and d.mean == pytest.approx(3.0) and d.sd == pytest.approx(math.sqrt(2.5))
    assert (d.low, d.high) == (pytest.approx(3.0 - half), pytest.approx(3.0 + half))
    assert d.low == pytest.approx(1.0371, abs=1e-4) and d.verdict == HOLDS


def test_t_quantiles_match_published_values_and_grow_towards_small_samples():
    published = {1: 12.706, 2: 4.303, 4: 2.776, 9: 2.262, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}
    for df, t in published.items():
        assert t_quantile_975(df) == pytest.approx(t, abs=1.5e-3), df
    qs = [t_quantile_975(df) for df in range(1, 200)]
    assert all(a > b for a, b in zip(qs, qs[1:], strict=False))  # monotone across the table / expansion seam
    assert qs[-1] > 1.959964
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile_975(0)


def test_interval_excluding_zero_on_either_side_or_not():
    assert paired_interval([0.010, 0.012, 0.011, 0.009, 0.013]).verdict == HOLDS
    assert paired_interval([-0.010, -0.012, -0.011, -0.009, -0.013]).verdict == REVERSED
    # the mean is positive, but one seed of five goes the other way by enough: not a finding
    mixed = paired_interval([0.004, 0.006, 0.005, -0.008, 0.003])
    assert mixed.mean > 0 and mixed.low < 0 < mixed.high and mixed.verdict == INCONCLUSIVE


def test_undefined_seeds_are_dropped_and_too_few_seeds_give_no_interval():
    d = paired_interval([0.2, float("nan"), 0.3, 0.25])
    assert d.n == 3 and d.mean == pytest.approx(0.25) and len(d.per_seed) == 4
    one = paired_interval([0.5])
    assert one.n == 1 and math.isnan(one.low) and one.verdict == INCONCLUSIVE
    assert paired_interval([]).n == 0 and paired_interval([np.nan]).verdict == INCONCLUSIVE
    assert verdict(float("nan"), 1.0) == INCONCLUSIVE
    assert verdict(0.0, 1.0) == INCONCLUSIVE  # touching zero does not exclude it


def test_to_dict_carries_the_verdict():
    out = paired_interval([1.0, 2.0, 3.0]).to_dict()  # mean 2, but t(0.975, 2) = 4.303 makes it wide
    assert out["verdict"] == INCONCLUSIVE and out["low"] < 0 and out["n"] == 3 and out["per_seed"] == [1.0, 2.0, 3.0]
    assert out["method"] == "paired t, 95%"
