"""Stage 7, rank: Scores → Ranking. Orders candidates by expected value, keeps the best `top_k`.

Expected value is bid × pCTR × pCVR in float64; ties keep request order (a stable, deterministic
ranking the same request always reproduces). Pure numpy: the ranked columns are gathered here and
only turned into messages by encode.
"""

from __future__ import annotations

import numpy as np

from serving.finite import ensure_finite
from serving.pipeline.context import RequestContext
from serving.pipeline.values import Ranking, Scores


def rank_order(bid: np.ndarray, p_ctr: np.ndarray, p_cvr: np.ndarray,
               top_k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(indices of the best `top_k` candidates, best first; every candidate's expected value)."""
    ev = bid * p_ctr.astype(np.float64) * p_cvr.astype(np.float64)
    order = np.lexsort((np.arange(len(ev)), -ev))[:top_k]
    return order, ev


class RankStage:
    """Scores → Ranking."""

    name = "rank"

    async def __call__(self, scores: Scores, ctx: RequestContext) -> Ranking:
        request = scores.request
        # the last check: no NaN or infinite score is ranked or leaves the server (serving/finite.py)
        ensure_finite(scores.p_ctr, scores.p_cvr, request.bid, model=f"{scores.handle.name}/{scores.handle.version}")
        order, ev = rank_order(request.bid, scores.p_ctr, scores.p_cvr, request.top_k)
        return Ranking(request, scores.handle, scores.backend, ad_id=request.ad_id[order], request_index=order,
                       p_ctr=scores.p_ctr[order], p_cvr=scores.p_cvr[order], expected_value=ev[order],
                       all_p_ctr=scores.p_ctr, all_p_cvr=scores.p_cvr, all_expected_value=ev)
