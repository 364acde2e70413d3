"""The last check before ranking: no NaN or infinite score leaves the server.

Validation bounds every input (max_bid, max_abs_dense_feature), which keeps a sound model's outputs
finite; this check covers what validation cannot see: a model that overflows on inputs within the bounds,
a damaged version, a backend returning garbage. Such a request is refused, INTERNAL with the model and
the candidate named (the server, not the caller, is at fault), rather than ranked on NaN, which sorts
arbitrarily and reaches the auction as OK. Repeats are logged once per interval.

Usage::

    ensure_finite(result.p_ctr, result.p_cvr, parsed.bid, model="vm/3")   # NonFiniteScore if any is not
"""

from __future__ import annotations

import logging

import grpc
import numpy as np

from serving.errors import RankingError
from serving.security.throttled_log import ThrottledLog

log = logging.getLogger(__name__)
_non_finite = ThrottledLog(log, interval_s=10.0)


class NonFiniteScore(RankingError):
    """A model produced a NaN or infinite p_ctr, p_cvr or expected value."""

    code = grpc.StatusCode.INTERNAL


def ensure_finite(p_ctr: np.ndarray, p_cvr: np.ndarray, bid: np.ndarray, *, model: str) -> None:
    """Raises NonFiniteScore naming the first candidate whose p_ctr, p_cvr or bid × p_ctr × p_cvr (the
    expected value ranking sorts on, in float64) is not finite."""
    ev = bid * p_ctr.astype(np.float64) * p_cvr.astype(np.float64)
    bad = ~(np.isfinite(p_ctr) & np.isfinite(p_cvr) & np.isfinite(ev))
    if not bad.any():
        return
    i = int(np.flatnonzero(bad)[0])
    message = (f"model {model} produced a non-finite score for candidates[{i}] (p_ctr={float(p_ctr[i])}, "
               f"p_cvr={float(p_cvr[i])}); refused rather than ranked")
    _non_finite.warning(model, "%s (%d of %d candidates)", message, int(bad.sum()), len(bad))
    raise NonFiniteScore(message)
