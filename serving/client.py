"""A small client for the ranking API, and the one builder of synthetic Score requests.

`build_request` is shared by `adrank score`, the demo, the load generator (`loadtests.workload`) and
the benchmarks, so all of them send the same kind of request for the same seed. A `RequestMix` says how
the context and bids are drawn; the strings themselves come from `models.vocab`.

Usage::

    req = build_request(user_id=7, n_candidates=200, catalog=load_catalog("runs/demo/catalog.npz"), seed=1)
    resp = score("127.0.0.1:50051", req)
    cols = score_columns("127.0.0.1:50051", to_columns(req))   # the same candidates as columns
    ranked = ranked_arrays(cols)                                 # numpy views: ad_id, p_ctr, ..., best first
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from models.vocab import DEVICE_TRAFFIC, PLACEMENT_TRAFFIC
from protos.adrank.v1 import ranking_pb2, ranking_pb2_grpc
from serving.columns import CANDIDATE_COLUMNS, fill_column, ranked_arrays
from serving.security.tls import ClientTls, open_channel

__all__ = ["RequestMix", "build_request", "columns_request", "ranked_arrays", "render_table", "rows_from_columns",
           "score", "score_columns", "to_columns"]


@dataclass(frozen=True, kw_only=True)
class RequestMix:
    """How a synthetic request draws its placement, device and bids.

    Usage::

        LOAD_MIX = RequestMix(weighted=True, bid_jitter=0.2)
    """

    weighted: bool = False
    """False: every placement/device of models.vocab's traffic tables equally likely (one `rng.integers`
    draw each); True: drawn with their traffic shares (one `rng.choice(p=...)` draw each)."""
    bid_jitter: float = 0.0
    """Catalog bids are multiplied by U(1 - bid_jitter, 1 + bid_jitter), as auctions vary them; 0 keeps the
    catalog's bids and draws nothing. Requests without a catalog draw their own lognormal bids."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.bid_jitter < 1.0:
            raise ValueError(f"bid_jitter must be in [0, 1), got {self.bid_jitter}")

    def draw(self, rng: np.random.Generator, traffic: Mapping[str, float]) -> str:
        names = tuple(traffic)
        if self.weighted:
            return names[rng.choice(len(names), p=tuple(traffic.values()))]
        return names[rng.integers(len(names))]


UNIFORM_MIX = RequestMix()


def fill_user_features(req: ranking_pb2.ScoreRequest, catalog: Mapping[str, np.ndarray], user_id: int) -> None:
    """The user's segment and recent click categories from the catalog, as a feature store would."""
    users = catalog["user_id"]
    u = int(np.searchsorted(users, user_id))
    if u < len(users) and users[u] == user_id:
        req.user.segment = int(catalog["user_segment"][u])
        req.user.recent_categories.extend(int(c) for c in catalog["user_recent"][u] if c >= 0)


def _catalog_candidates(req: ranking_pb2.ScoreRequest, catalog: Mapping[str, np.ndarray], n_candidates: int,
                        rng: np.random.Generator, bid_jitter: float) -> None:
    n_ads = len(catalog["ad_id"])
    pick = rng.choice(n_ads, size=min(int(n_candidates), n_ads), replace=False)
    bids = catalog["bid"][pick].astype(np.float64)
    if bid_jitter:
        bids = bids * rng.uniform(1.0 - bid_jitter, 1.0 + bid_jitter, size=len(pick))
    # whole columns at once: per-candidate numpy indexing costs more than the server spends scoring
    ad, adv, camp, cat = (catalog[k][pick].tolist() for k in ("ad_id", "advertiser_id", "campaign_id", "category"))
    req.candidates.extend(
        ranking_pb2.Candidate(ad_id=a, advertiser_id=v, campaign_id=c, category=g, bid=b)
        for a, v, c, g, b in zip(ad, adv, camp, cat, bids.tolist(), strict=True)
    )


def _random_candidates(req: ranking_pb2.ScoreRequest, n_candidates: int, rng: np.random.Generator) -> None:
    for ad in rng.choice(1_000_000, size=n_candidates, replace=False):
        req.candidates.add(ad_id=int(ad), advertiser_id=int(ad % 997), campaign_id=int(ad % 4001),
                           category=int(ad % 40), bid=float(rng.lognormal(0.0, 0.5)))


def build_request(user_id: int, n_candidates: int, catalog: Mapping[str, np.ndarray] | None, *, seed: int = 0,
                  rng: np.random.Generator | None = None, mix: RequestMix = UNIFORM_MIX,
                  request_time_ms: int | None = None, model: str = "", version: int | None = None,
                  request_id: str = "") -> ranking_pb2.ScoreRequest:
    """Samples `n_candidates` distinct ads (from the catalog when given, else random ids) for `user_id`.

    Args:
        catalog: ads and users (`models.catalog`); the user's segment and recent categories come from it.
            None: random ad ids, for backends that need no catalog (Triton benches).
        seed: seeds a fresh generator; ignored when `rng` is given.
        rng: a generator shared across calls (the load generator draws a whole pool from one).
        mix: how context and bids are drawn.
        request_time_ms: left unset when None (the server then uses its clock).
    """
    rng = np.random.default_rng(seed) if rng is None else rng
    req = ranking_pb2.ScoreRequest(request_id=request_id, user_id=int(user_id))
    if request_time_ms is not None:
        req.request_time_ms = int(request_time_ms)
    req.context.placement = mix.draw(rng, PLACEMENT_TRAFFIC)
    req.context.device = mix.draw(rng, DEVICE_TRAFFIC)
    if catalog is not None:
        fill_user_features(req, catalog, user_id)
        _catalog_candidates(req, catalog, n_candidates, rng, mix.bid_jitter)
    else:
        _random_candidates(req, n_candidates, rng)
    if model:
        req.model.name = model
    if version is not None:
        req.model.version = version
    return req


def columns_request(ad_id: np.ndarray, advertiser_id: np.ndarray, campaign_id: np.ndarray, category: np.ndarray,
                    bid: np.ndarray, *, dense_features: np.ndarray | None = None,
                    **fields: object) -> ranking_pb2.ScoreColumnsRequest:
    """A ScoreColumnsRequest from candidate arrays (one value per candidate; `dense_features` an
    [N, E] matrix or None); `fields` are the request's other fields (user_id, context, user, …), as
    for ScoreRequest."""
    req = ranking_pb2.ScoreColumnsRequest(**fields)
    cols = req.candidates
    for (name, dtype), values in zip(CANDIDATE_COLUMNS, (ad_id, advertiser_id, campaign_id, category, bid),
                                     strict=True):
        fill_column(getattr(cols, name), values, dtype)
    if dense_features is not None and dense_features.size:
        cols.dense_width = dense_features.shape[1]
        fill_column(cols.dense_features, dense_features, ranking_pb2.DTYPE_FLOAT32)
    return req


def to_columns(req: ranking_pb2.ScoreRequest) -> ranking_pb2.ScoreColumnsRequest:
    """The same request with its candidates as columns (dense features zero-padded to the widest row,
    as the server pads rows)."""
    cands = req.candidates
    arrays = [np.array([getattr(c, name) for c in cands]) for name, _ in CANDIDATE_COLUMNS]
    width = max((len(c.dense_features) for c in cands), default=0)
    dense = None
    if width:
        dense = np.zeros((len(cands), width), np.float32)
        for i, c in enumerate(cands):
            dense[i, :len(c.dense_features)] = c.dense_features
    out = columns_request(*arrays, dense_features=dense)
    for name in ("request_id", "user_id", "request_time_ms", "context", "user", "model", "top_k"):
        if name in ("context", "user", "model"):
            getattr(out, name).CopyFrom(getattr(req, name))
        elif name in ("request_time_ms", "top_k"):
            if req.HasField(name):
                setattr(out, name, getattr(req, name))
        else:
            setattr(out, name, getattr(req, name))
    return out


def score_columns(target: str, request: ranking_pb2.ScoreColumnsRequest, timeout_s: float = 5.0, *,
                  tls: ClientTls | None = None, token: str | None = None) -> ranking_pb2.ScoreColumnsResponse:
    """One ScoreColumns call (`ranked_arrays` reads the response as numpy)."""
    metadata = [("authorization", f"Bearer {token}")] if token else None
    with open_channel(target, tls) as channel:
        return ranking_pb2_grpc.AdRankingStub(channel).ScoreColumns(request, timeout=timeout_s, metadata=metadata)


def rows_from_columns(response: ranking_pb2.ScoreColumnsResponse) -> ranking_pb2.ScoreResponse:
    """The ScoreResponse carrying the same ranking as a ScoreColumns response (for display and for
    code written against rows)."""
    out = ranking_pb2.ScoreResponse(request_id=response.request_id, served_by=response.served_by, flags=response.flags,
                                    timing=response.timing, request_time_ms=response.request_time_ms)
    cols = ranked_arrays(response)
    for r, row in enumerate(zip(*(cols[k].tolist() for k in ("ad_id", "request_index", "p_ctr", "p_cvr",
                                                               "expected_value")), strict=True), start=1):
        a, i, c, v, e = row
        out.candidates.add(ad_id=a, request_index=i, p_ctr=c, p_cvr=v, expected_value=e, rank=r)
    return out


def score(target: str, request: ranking_pb2.ScoreRequest, timeout_s: float = 5.0, *, tls: ClientTls | None = None,
          token: str | None = None) -> ranking_pb2.ScoreResponse:
    """One Score call; TLS when `tls` is given, a bearer token when `token` is (docs/security.md)."""
    metadata = [("authorization", f"Bearer {token}")] if token else None
    with open_channel(target, tls) as channel:
        return ranking_pb2_grpc.AdRankingStub(channel).Score(request, timeout=timeout_s, metadata=metadata)


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
