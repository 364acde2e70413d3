"""Paired differences over seeds: the mean, a 95% paired t interval, and the verdict a claim earns.

Why a paired t interval and not a bootstrap over seeds: a claim is read from 5 or so seeds. A
percentile bootstrap over 5 values can only return intervals spanned by those 5 values (it resamples
them), so it is too narrow at small n (its coverage of a nominal 95% is well below 95% at n = 5). The
t interval widens with the t quantile (2.776 at 4 degrees of freedom, against 1.96 for a normal) and is
exact when the per-seed differences are normal; it is the honest one at this n. Pairing (each seed's
difference, on the same split, the same FM and the same DAS log) removes the seed-to-seed variation
every variant shares, which is most of it.

The t quantiles come from a table (exact to 3 decimals for 1–30 degrees of freedom) and, above 30, from
the Cornish–Fisher expansion around the normal quantile (error below 1e-4 there): scipy would be a
dependency for one number.

Usage::

    d = paired_interval(np.array(ne_kd) - np.array(ne_kd_loopfm))   # > 0: KD + LoopFM has the lower NE
    d.mean, d.low, d.high, d.n, d.verdict                            # verdict: holds | reversed | inconclusive
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# two-sided 95%: the 0.975 quantile of Student's t with df = 1 … 30 degrees of freedom
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
_Z975 = 1.959964

HOLDS, REVERSED, INCONCLUSIVE = "holds", "reversed", "inconclusive"


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom (the 95% two-sided multiplier)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975  # Cornish–Fisher expansion of the t quantile in powers of 1/df
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3))


@dataclass(frozen=True)
class PairedInterval:
    """Mean of the per-seed differences and its 95% paired t interval; `verdict` reads the interval:
    *holds* when it lies above zero, *reversed* when below, *inconclusive* when it contains zero (or when
    fewer than 2 seeds give no interval at all)."""

    mean: float
    low: float
    high: float
    n: int
    sd: float
    per_seed: tuple[float, ...]
    method: str = "paired t, 95%"

    @property
    def verdict(self) -> str:
        return verdict(self.low, self.high)

    def to_dict(self) -> dict:
        return {**asdict(self), "per_seed": list(self.per_seed), "verdict": self.verdict}


def verdict(low: float, high: float) -> str:
    """`holds` only when the whole interval is above zero; a NaN bound (too few seeds) is inconclusive."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return INCONCLUSIVE
    if low > 0:
        return HOLDS
    if high < 0:
        return REVERSED
    return INCONCLUSIVE


def paired_interval(differences: np.ndarray | list[float]) -> PairedInterval:
    """95% t interval of the mean of per-seed paired differences. Seeds whose difference is undefined
    (NaN, e.g. a transfer ratio on a seed where the FM does not beat the baseline) are dropped, and `n`
    counts the rest; with n < 2 the bounds are NaN and the verdict inconclusive."""
    d = np.asarray(differences, dtype=np.float64)
    kept = d[np.isfinite(d)]
    n = int(kept.size)
    if n == 0:
        return PairedInterval(math.nan, math.nan, math.nan, 0, math.nan, tuple(d.tolist()))
    mean = float(kept.mean())
    if n < 2:
        return PairedInterval(mean, math.nan, math.nan, n, math.nan, tuple(d.tolist()))
    sd = float(kept.std(ddof=1))
    half = t_quantile_975(n - 1) * sd / math.sqrt(n)
    return PairedInterval(mean, mean - half, mean + half, n, sd, tuple(d.tolist()))


def ratio_interval(ratios: np.ndarray | list[float]) -> tuple[float, float, float]:
    """(geometric mean, low, high) of ratios over repeated runs, the 95 % t interval taken on their logs
    (a ratio of 1.1 and one of 1/1.1 are the same distance from 1); NaN bounds below 2 runs. For benchmark
    ratios read over runs (`loadtests.bench_requestlog.summarise`, `loadtests.rollout_acceptance.summarise_runs`)."""
    d = paired_interval(np.log(np.asarray(ratios, dtype=np.float64)))
    return math.exp(d.mean), math.exp(d.low), math.exp(d.high)
