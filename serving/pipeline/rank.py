"""Stage 7, rank: Scores → Ranking. Orders candidates by expected value, keeps the best `top_k`.

Expected value is bid × pCTR × pCVR in float64; ties keep request order (a stable, deterministic
ranking the same request always reproduces). One compiled pass (`serving.pipeline.kernels.rank_request`)
computes the expected values, finds a non-finite score and gathers the ranked columns; `rank_order`
and `ensure_finite` are the numpy reference (and the fallback without numba), and the message a
non-finite score is refused with is always `ensure_finite`'s. Encode turns the columns into messages.
"""

from __future__ import annotations

import numpy as np

from serving.finite import ensure_finite
from serving.pipeline.context import RequestContext
from serving.pipeline.kernels import KERNELS, NoCompiledKernel
from serving.pipeline.values import Ranking, Scores


def rank_order(bid: np.ndarray, p_ctr: np.ndarray, p_cvr: np.ndarray,
               top_k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the best `top_k` candidates, best first; every candidate's expected value)."""
    ev = bid * p_ctr.astype(np.float64) * p_cvr.astype(np.float64)
    order = np.lexsort((np.arange(len(ev)), -ev))[:top_k]
    return order, ev


def _compiled_fits(*scores: np.ndarray) -> bool:
    """Whether the scores are what the kernel was compiled for (float32 vectors, as both backends return)."""
    return all(s.dtype == np.float32 and s.ndim == 1 and s.flags.c_contiguous for s in scores)


def reference_ranking(scores: Scores) -> Ranking:
    """The ranking through the numpy reference (`ensure_finite`, then `rank_order`)."""
    request = scores.request
    ensure_finite(scores.p_ctr, scores.p_cvr, request.bid, model=f"{scores.handle.name}/{scores.handle.version}")
    order, ev = rank_order(request.bid, scores.p_ctr, scores.p_cvr, request.top_k)
    return Ranking(request, scores.handle, scores.backend, ad_id=request.ad_id[order], request_index=order,
                   p_ctr=scores.p_ctr[order], p_cvr=scores.p_cvr[order], expected_value=ev[order],
                   all_p_ctr=scores.p_ctr, all_p_cvr=scores.p_cvr, all_expected_value=ev)


class RankStage:
    """Scores → Ranking."""

    name = "rank"

    def __init__(self) -> None:
        if KERNELS is not None:
            KERNELS.warm()  # compiled here, never inside a request

    async def __call__(self, scores: Scores, ctx: RequestContext) -> Ranking:
        request, p_ctr, p_cvr = scores.request, scores.p_ctr, scores.p_cvr
        if (KERNELS is None or not _compiled_fits(p_ctr, p_cvr)
                or not len(p_ctr) == len(p_cvr) == len(request.bid) == len(request.ad_id)):
            return reference_ranking(scores)
        top_k = -1 if request.top_k is None else request.top_k
        try:
            bad, order, ad_id, ctr, cvr, ev_ranked, ev = KERNELS.call(KERNELS.rank_request, request.ad_id,
                                                                      request.bid, p_ctr, p_cvr, top_k)
        except NoCompiledKernel:  # arrays of a type the kernel was not compiled for
            return reference_ranking(scores)
        if bad >= 0:
            # the last check: no NaN or infinite score is ranked or leaves the server (serving/finite.py);
            # the reference raises the message naming the candidate
            return reference_ranking(scores)
        return Ranking(request, scores.handle, scores.backend, ad_id=ad_id, request_index=order, p_ctr=ctr,
                       p_cvr=cvr, expected_value=ev_ranked, all_p_ctr=p_ctr, all_p_cvr=p_cvr, all_expected_value=ev)
