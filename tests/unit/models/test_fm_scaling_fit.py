"""The power-law fit of `adrank fm-scaling`: exact on exact power laws, honest R² on noisy ones."""

from __future__ import annotations

import numpy as np
import pytest

from models.fm_scaling import fit_power_law, fm_size


def test_an_exact_power_law_is_recovered():
    c = np.array([1e5, 3e5, 1e6, 3e6, 1e7])
    f = fit_power_law(c, 2.5 * c**-0.07)
    assert f.a == pytest.approx(2.5, rel=1e-9) and f.b == pytest.approx(0.07, rel=1e-9)
    assert f.r2 == pytest.approx(1.0) and f.n == 5
    np.testing.assert_allclose(f(c), 2.5 * c**-0.07, rtol=1e-9)


def test_r2_drops_when_the_points_do_not_follow_a_power_law():
    c = np.array([1e5, 1e6, 1e7, 1e8])
    f = fit_power_law(c, [0.90, 0.80, 0.95, 0.85])  # no trend
    assert 0.0 <= f.r2 < 0.2
    rising = fit_power_law(c, [0.80, 0.85, 0.90, 0.95])
    assert rising.b < 0  # NE rising with compute is reported as a negative exponent, not hidden


def test_fit_refuses_what_it_cannot_fit():
    with pytest.raises(ValueError, match="at least 2 points"):
        fit_power_law([1e5], [0.9])
    with pytest.raises(ValueError, match="x > 0 and y > 0"):
        fit_power_law([1e5, 1e6], [0.9, -0.1])
    with pytest.raises(ValueError, match="equal-length"):
        fit_power_law([1e5, 1e6], [0.9])


def test_sizes_scale_the_experiment_fm_shape():
    s = fm_size(16, 2, 32)
    assert s["d_model"] == 16 and s["n_layers"] == 2 and s["hidden_dim"] == 64 and s["window"] == 8
    assert fm_size(4, 1, 4)["n_heads"] == 1 and fm_size(4, 1, 4)["window"] == 2
