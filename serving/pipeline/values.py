"""The typed values that pass from one stage to the next (frozen dataclasses of numpy arrays).

Only decode reads protobuf and only encode writes it; everything between is plain arrays and model
handles, so a second wire format (columns instead of rows) needs a decoder and an encoder, not a
second copy of validation, routing or ranking. Each value carries what later stages still need
(the request and the model handle travel along), so a stage depends only on its input type.

    decode    bytes | ScoreRequest -> DecodedRequest
    validate  DecodedRequest       -> ParsedRequest
    route     ParsedRequest        -> Route
    history   Route                -> WithHistory
    features  WithHistory          -> ModelInputs
    infer     ModelInputs          -> Scores
    rank      Scores               -> Ranking
    encode    Ranking              -> ScoreResponse
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from serving.backends.base import ModelHandle
from serving.history import HistoryInputs

_EMPTY_F32 = np.zeros(0, np.float32)
_EMPTY_F64 = np.zeros(0, np.float64)


@dataclass(frozen=True, slots=True)
class DecodedRequest:
    """A request as read off the wire, not yet checked. Candidate arrays are empty when the request
    carries no candidates or more than the decoder was allowed to read, and `dense` is empty when a
    row is wider than allowed: the decoder never allocates for what validation will refuse."""

    request_id: str
    user_id: int
    request_time_ms: int | None  # None: the caller sent none
    placement: str
    device: str
    hour_of_day: int | None  # None: derive from the request time
    segment: int
    recent_categories: np.ndarray  # int64 [K]
    n_candidates: int
    ad_id: np.ndarray  # int64 [N]
    advertiser_id: np.ndarray
    campaign_id: np.ndarray
    category: np.ndarray
    bid: np.ndarray  # float64 [N]
    dense_widths: np.ndarray  # int64 [N]: dense_features per candidate
    dense_width: int  # the widest row's dense_features (0 without candidates)
    dense: np.ndarray  # float32 [N, max width], zero-padded
    model_name: str  # "" = the server's default model
    model_version: int | None
    top_k: int | None


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """A request as arrays, after validation: every field within its limits."""

    request_id: str
    user_id: int
    request_time_ms: int
    time_defaulted: bool
    placement: str
    device: str
    hour: int
    segment: int
    recent_categories: np.ndarray  # int64 [K]
    ad_id: np.ndarray
    advertiser_id: np.ndarray
    campaign_id: np.ndarray
    category: np.ndarray
    bid: np.ndarray  # float64
    dense: np.ndarray  # float32 [N, E]
    model_name: str
    model_version: int | None
    top_k: int | None = None  # None = return every candidate


@dataclass(frozen=True, slots=True)
class Route:
    """The model version that serves the request, checked ready and wide enough for its features."""

    request: ParsedRequest
    handle: ModelHandle


@dataclass(frozen=True, slots=True)
class WithHistory:
    """The route plus the user's FM history tensors; `history` is None for models that read none."""

    request: ParsedRequest
    handle: ModelHandle
    history: HistoryInputs | None


@dataclass(frozen=True, slots=True)
class ModelInputs:
    """Every tensor the model's graph reads, by input name, for the request's N candidates."""

    request: ParsedRequest
    handle: ModelHandle
    tensors: dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class Scores:
    """The model's outputs in request order, and which backend computed them (`served_by.backend`)."""

    request: ParsedRequest
    handle: ModelHandle
    backend: str
    p_ctr: np.ndarray  # float32 [N]
    p_cvr: np.ndarray  # float32 [N]


@dataclass(frozen=True, slots=True)
class Ranking:
    """The best `top_k` candidates, best first, as columns (rank r is row r - 1)."""

    request: ParsedRequest
    handle: ModelHandle
    backend: str
    ad_id: np.ndarray  # int64 [K]
    request_index: np.ndarray  # int64 [K]: position in the request
    p_ctr: np.ndarray  # float32 [K]
    p_cvr: np.ndarray  # float32 [K]
    expected_value: np.ndarray  # float64 [K]: bid × p_ctr × p_cvr
    # Every candidate's scores in request order, not only the returned ones: a request log records what
    # the model said about each candidate (a candidate outside top_k still had a score). Empty when the
    # stage that built the ranking did not keep them.
    all_p_ctr: np.ndarray = field(default_factory=lambda: _EMPTY_F32)  # float32 [N]
    all_p_cvr: np.ndarray = field(default_factory=lambda: _EMPTY_F32)  # float32 [N]
    all_expected_value: np.ndarray = field(default_factory=lambda: _EMPTY_F64)  # float64 [N]
