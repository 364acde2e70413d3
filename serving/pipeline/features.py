"""Stage 5, features: WithHistory → ModelInputs. Every tensor the model's graph reads.

The engine is `models.features.features_for_request`, the code training's features come from, so
served and trained tensors cannot drift apart; user and context features are broadcast over the
candidates and the history tensors (if any) join them under their graph input names.
"""

from __future__ import annotations

import numpy as np

from models.features import DEVICES, PLACEMENTS, features_for_request, vocab_index
from serving.backends.base import ModelHandle
from serving.pipeline.context import RequestContext
from serving.pipeline.values import ModelInputs, ParsedRequest, WithHistory


def model_inputs(request: ParsedRequest, handle: ModelHandle) -> dict[str, np.ndarray]:
    """The request's non-history model inputs, built with `handle`'s feature spec."""
    r = request
    return features_for_request(
        handle.feature_spec, ad_id=r.ad_id, advertiser_id=r.advertiser_id, campaign_id=r.campaign_id,
        category=r.category, bid=r.bid, placement=vocab_index(PLACEMENTS, r.placement),
        device=vocab_index(DEVICES, r.device), hour=r.hour, user_segment=r.segment,
        recent_categories=r.recent_categories, extra_dense=r.dense if r.dense.size else None,
    )


class FeaturesStage:
    """WithHistory → ModelInputs."""

    name = "features"

    async def __call__(self, value: WithHistory, ctx: RequestContext) -> ModelInputs:
        tensors = model_inputs(value.request, value.handle)
        if value.history is not None:
            tensors.update(value.history.tensors)
        return ModelInputs(value.request, value.handle, tensors)
