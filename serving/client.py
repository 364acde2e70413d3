"""A small client for the ranking API: builds requests from a catalog and prints ranked tables."""

from __future__ import annotations

from collections.abc import Mapping

import grpc
import numpy as np

from protos.adrank.v1 import ranking_pb2, ranking_pb2_grpc

PLACEMENT_CHOICES = ("feed", "story", "search", "video")
DEVICE_CHOICES = ("ios", "android", "web")


def fill_user_features(req: ranking_pb2.ScoreRequest, catalog: Mapping[str, np.ndarray], user_id: int) -> None:
    """The user's segment and recent click categories from the catalog, as a feature store would."""
    users = catalog["user_id"]
    u = int(np.searchsorted(users, user_id))
    if u < len(users) and users[u] == user_id:
        req.user.segment = int(catalog["user_segment"][u])
        req.user.recent_categories.extend(int(c) for c in catalog["user_recent"][u] if c >= 0)


def build_request(user_id: int, n_candidates: int, catalog: Mapping[str, np.ndarray] | None, *, seed: int = 0,
                  request_time_ms: int | None = None, model: str = "", version: int | None = None,
                  request_id: str = "") -> ranking_pb2.ScoreRequest:
    """Samples `n_candidates` distinct ads (from the catalog when given, else random ids) for `user_id`."""
    rng = np.random.default_rng(seed)
    req = ranking_pb2.ScoreRequest(request_id=request_id, user_id=user_id)
    if request_time_ms is not None:
        req.request_time_ms = request_time_ms
    req.context.placement = PLACEMENT_CHOICES[rng.integers(len(PLACEMENT_CHOICES))]
    req.context.device = DEVICE_CHOICES[rng.integers(len(DEVICE_CHOICES))]
    if catalog is not None:
        fill_user_features(req, catalog, user_id)
        n_ads = len(catalog["ad_id"])
        pick = rng.choice(n_ads, size=min(n_candidates, n_ads), replace=False)
        for i in pick:
            req.candidates.add(ad_id=int(catalog["ad_id"][i]), advertiser_id=int(catalog["advertiser_id"][i]),
                               campaign_id=int(catalog["campaign_id"][i]), category=int(catalog["category"][i]),
                               bid=float(catalog["bid"][i]))
    else:
        for ad in rng.choice(1_000_000, size=n_candidates, replace=False):
            req.candidates.add(ad_id=int(ad), advertiser_id=int(ad % 997), campaign_id=int(ad % 4001),
                               category=int(ad % 40), bid=float(rng.lognormal(0.0, 0.5)))
    if model:
        req.model.name = model
    if version is not None:
        req.model.version = version
    return req


def score(target: str, request: ranking_pb2.ScoreRequest, timeout_s: float = 5.0) -> ranking_pb2.ScoreResponse:
    with grpc.insecure_channel(target) as channel:
        return ranking_pb2_grpc.AdRankingStub(channel).Score(request, timeout=timeout_s)


def render_table(response: ranking_pb2.ScoreResponse, request: ranking_pb2.ScoreRequest, limit: int = 20):
    """A rich Table of the top `limit` candidates."""
    from rich.table import Table

    sb = response.served_by
    flags = ", ".join(ranking_pb2.Flag.Name(f) for f in response.flags) or "none"
    table = Table(title=f"user {request.user_id}: {len(response.candidates)} ads ranked by "
                        f"{sb.model_name} v{sb.model_version} ({sb.backend}, fm={sb.fm_version}); flags: {flags}; "
                        f"server {response.timing.total_us} µs")
    for col in ("rank", "ad_id", "category", "bid", "pCTR", "pCVR", "expected value"):
        table.add_column(col, justify="right")
    for c in response.candidates[:limit]:
        cand = request.candidates[c.request_index]
        table.add_row(str(c.rank), str(c.ad_id), str(cand.category), f"{cand.bid:.3f}", f"{c.p_ctr:.4f}",
                      f"{c.p_cvr:.4f}", f"{c.expected_value:.5f}")
    if len(response.candidates) > limit:
        table.caption = f"… {len(response.candidates) - limit} more"
    return table
