"""Hand-made request-log records for the sink, schema and join tests."""

from __future__ import annotations

import numpy as np

from models.data.requestlog import RequestRecord


def make_record(request_id: str, *, n: int = 4, user_id: int = 7, request_time_ms: int = 1_000_000,
                ad_ids: list[int] | None = None, placement: int = 1, device: int = 2, hour: int = 5,
                segment: int = 3, **overrides: object) -> RequestRecord:
    """A record of `n` candidates; ad i has advertiser 100 + i, campaign 200 + i, category i % 5, bid 1 + i.
    Returned order: best first = highest request index first."""
    ads = np.array(ad_ids if ad_ids is not None else range(10, 10 + n), dtype=np.int64)
    n = len(ads)
    idx = np.arange(n)
    fields: dict[str, object] = dict(
        request_id=request_id, request_time_ms=request_time_ms, user_id=user_id, placement=placement, device=device,
        hour=hour, user_segment=segment, recent_categories=np.array([4, 1], np.int32), ad_id=ads,
        advertiser_id=100 + idx, campaign_id=200 + idx, category=(idx % 5).astype(np.int32),
        bid=1.0 + idx.astype(np.float64), p_ctr=np.linspace(0.01, 0.05, n, dtype=np.float32),
        p_cvr=np.full(n, 0.2, np.float32), expected_value=np.linspace(0.1, 0.5, n), order=idx[::-1].astype(np.int32),
        model_name="vm", model_version=2, rollout_arm="control", backend="embedded", fm_version="fm-1",
        snapshot_id="snap-9", flags=["FLAG_USER_HISTORY_MISSING"], stage_us={"features": 40, "infer": 300},
    )
    fields.update(overrides)
    return RequestRecord(**fields)  # type: ignore[arg-type]
