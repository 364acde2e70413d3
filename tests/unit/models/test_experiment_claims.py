"""Each experiment claim is a paired difference per seed, and holds only when its interval excludes zero."""

from __future__ import annotations

import pytest

from models.experiment import CLAIMS, VARIANTS, aggregate, claim_differences
from models.metrics import transfer_ratio


def _seed(fm, base, kd, aux, loop, kd_loop):
    ne = {"fm": fm, "vm_baseline": base, "vm_kd": kd, "vm_kd_aux": aux, "vm_loopfm_sum": loop,
          "vm_loopfm_attn": loop, "vm_kd_loopfm": kd_loop}
    return {n: {"ne": v, "auc": 0.7, "calibration": 1.0} for n, v in ne.items()}


def test_differences_are_signed_so_that_positive_is_the_claim():
    s = _seed(fm=0.85, base=0.88, kd=0.86, aux=0.855, loop=0.87, kd_loop=0.845)
    d = claim_differences(s)
    assert set(d) == set(CLAIMS)
    assert d["fm_beats_baseline"] == pytest.approx(0.03)
    assert d["loopfm_beats_baseline"] == pytest.approx(0.01)
    assert d["kd_loopfm_beats_kd"] == pytest.approx(0.015)
    assert d["aux_kd_beats_single_kd"] == pytest.approx(0.005)
    tr_kd, tr_both = transfer_ratio(0.88, 0.86, 0.85), transfer_ratio(0.88, 0.845, 0.85)
    assert d["tr_kd_loopfm_ge_1.5x_tr_kd"] == pytest.approx(tr_both - 1.5 * tr_kd)


def test_a_claim_true_in_the_mean_but_not_on_every_seed_does_not_hold():
    # aux beats single on four seeds by a little, loses on one by a lot: the mean favours aux, the interval does not
    seeds = [_seed(0.85, 0.88, kd, aux, 0.87, 0.845)
             for kd, aux in [(0.860, 0.858), (0.861, 0.859), (0.859, 0.857), (0.860, 0.858), (0.857, 0.862)]]
    summary = aggregate(seeds)
    aux = summary["claims"]["aux_kd_beats_single_kd"]
    assert aux["n"] == 5 and aux["low"] < 0 < aux["high"] and aux["verdict"] == "inconclusive"
    assert summary["checks"]["aux_kd_beats_single_kd"] is False
    assert summary["claims"]["fm_beats_baseline"]["verdict"] == "holds"  # 0.03 on every seed: zero spread
    assert summary["checks"]["fm_beats_baseline"] is True
    assert set(summary["variants"]) == {"fm", *VARIANTS}


def test_tr_claim_counts_only_seeds_where_the_transfer_ratio_is_defined():
    good = [_seed(0.85, 0.88, 0.86, 0.86, 0.87, 0.845 - 0.001 * i) for i in range(3)]
    undefined = _seed(0.89, 0.88, 0.86, 0.86, 0.87, 0.845)  # FM no better than the baseline: TR undefined
    tr = aggregate([*good, undefined])["claims"]["tr_kd_loopfm_ge_1.5x_tr_kd"]
    assert tr["n"] == 3 and len(tr["per_seed"]) == 4 and tr["verdict"] == "holds"
