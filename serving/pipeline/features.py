"""Stage 5, features: WithHistory → ModelInputs. Every tensor the model's graph reads.

The definition is `models.features.features_for_request`, the code training's features come from;
the stage builds the same tensors in one compiled pass (`serving.pipeline.kernels.assemble_request`,
bit for bit the same: tests/unit/serving/test_pipeline_kernels.py compares it with training's
`assemble`) and falls back to that function without numba. User and context features are broadcast
over the candidates and the history tensors (if any) join them under their graph input names.
"""

from __future__ import annotations

import numpy as np

from models.features import DEVICES, PLACEMENTS, SPARSE_FIELDS, FeatureSpec, features_for_request, vocab_index
from serving.backends.base import ModelHandle
from serving.pipeline.context import RequestContext
from serving.pipeline.kernels import KERNELS, NoCompiledKernel
from serving.pipeline.values import ModelInputs, ParsedRequest, WithHistory

_NO_EXTRA = np.zeros((0, 0), np.float32)
# the kernel's column order: the four candidate fields, then the four request-wide ones
if SPARSE_FIELDS != ("ad_id", "advertiser_id", "campaign_id", "category", "placement", "device", "hour",
                     "user_segment"):
    raise ImportError(f"serving.pipeline.kernels.assemble_request assumes another field order than {SPARSE_FIELDS}")


def reference_inputs(request: ParsedRequest, handle: ModelHandle) -> dict[str, np.ndarray]:
    """The request's non-history model inputs through training's feature code (the definition)."""
    r = request
    return features_for_request(
        handle.feature_spec, ad_id=r.ad_id, advertiser_id=r.advertiser_id, campaign_id=r.campaign_id,
        category=r.category, bid=r.bid, placement=vocab_index(PLACEMENTS, r.placement),
        device=vocab_index(DEVICES, r.device), hour=r.hour, user_segment=r.segment,
        recent_categories=r.recent_categories, extra_dense=r.dense if r.dense.size else None,
    )


def compiled_features(spec: FeatureSpec, *, ad_id: np.ndarray, advertiser_id: np.ndarray, campaign_id: np.ndarray,
                      category: np.ndarray, bid: np.ndarray, placement: int, device: int, hour: int,
                      user_segment: int, recent_categories: np.ndarray,
                      extra_dense: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """`models.features.features_for_request` (the same arguments, the same tensors bit for bit) as one
    compiled pass; needs `KERNELS`."""
    extra = extra_dense if extra_dense is not None and extra_dense.size else _NO_EXTRA
    if extra.shape[1] > spec.max_extra_dense:  # route refuses these first; the same guard as `assemble`'s
        raise ValueError(f"{extra.shape[1]} dense features exceed the model's limit of {spec.max_extra_dense}")
    context = np.array((placement, device, hour, user_segment), np.int64)
    sparse, recent, dense, bid32 = KERNELS.call(
        KERNELS.assemble_request, ad_id, advertiser_id, campaign_id, category, context, recent_categories, bid,
        extra, spec.sizes, spec.offsets, spec.recent_offset, spec.n_categories, spec.recent_k, spec.dense_width)
    dense[:, 0] = np.log1p(bid32)  # numpy's log1p on the same float32 bids as training's: no libm drift
    return {"sparse": sparse, "recent": recent, "dense": dense}


def model_inputs(request: ParsedRequest, handle: ModelHandle) -> dict[str, np.ndarray]:
    """The request's non-history model inputs, built with `handle`'s feature spec."""
    if KERNELS is None:
        return reference_inputs(request, handle)
    r = request
    try:
        return compiled_features(
            handle.feature_spec, ad_id=r.ad_id, advertiser_id=r.advertiser_id, campaign_id=r.campaign_id,
            category=r.category, bid=r.bid, placement=vocab_index(PLACEMENTS, r.placement),
            device=vocab_index(DEVICES, r.device), hour=r.hour, user_segment=r.segment,
            recent_categories=r.recent_categories, extra_dense=r.dense)
    except NoCompiledKernel:  # arrays of a type the kernel was not compiled for (e.g. a replayed log's)
        return reference_inputs(request, handle)


class FeaturesStage:
    """WithHistory → ModelInputs."""

    name = "features"

    def __init__(self) -> None:
        if KERNELS is not None:
            KERNELS.warm()  # compiled here, never inside a request

    async def __call__(self, value: WithHistory, ctx: RequestContext) -> ModelInputs:
        tensors = model_inputs(value.request, value.handle)
        if value.history is not None:
            tensors.update(value.history.tensors)
        return ModelInputs(value.request, value.handle, tensors)
