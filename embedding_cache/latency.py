"""Latency percentiles: the one helper every benchmark and the load-test report summarise samples with.

It lives here, numpy only, because `embedding_cache` is the one package that imports no other project
package: the cache bench, the Triton bench (`loadtests.bench_triton`) and `loadtests` can all use it
without a package importing back into its importers.

Percentiles are numpy's default (linear interpolation), so figures match those recorded before.

Usage::

    percentiles(samples_us, (50, 99), key="p{q}_us")  # {"p50_us": ..., "p99_us": ...}
    latency_stats(samples_us)                          # {"p50_us": ..., "p99_us": ..., "mean_us": ...}
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NAN = float("nan")


def percentiles(samples: Sequence[float] | np.ndarray, qs: Sequence[float] = (50, 99), *,
                key: str = "p{q}") -> dict[str, float]:
    """{key.format(q=q): the q-th percentile} for each q, in order; NaN for every q when there are no samples.

    `q` is formatted with `:g`-like rules (50 → "50", 99.9 → "99.9") so keys read as written.
    """
    x = np.asarray(samples).ravel()  # no cast: float32 samples keep numpy's float32 percentiles
    values = np.percentile(x, list(qs)) if x.size else [NAN] * len(qs)
    return {key.format(q=f"{q:g}"): float(v) for q, v in zip(qs, values, strict=True)}


def latency_stats(samples: Sequence[float] | np.ndarray, *, unit: str = "us",
                  qs: Sequence[float] = (50, 99)) -> dict[str, float]:
    """p50/p99 (or `qs`) and the mean of `samples`, keyed with their unit: {"p50_us", "p99_us", "mean_us"}."""
    x = np.asarray(samples).ravel()
    return {**percentiles(x, qs, key=f"p{{q}}_{unit}"), f"mean_{unit}": float(x.mean()) if x.size else NAN}
