"""Small stand-ins for the serving unit tests: model handles built from a manifest in memory, a
backend that computes deterministic scores without onnxruntime, requests, and an in-memory FM cache.

Scores are a pure function of the assembled features (p_ctr rises with the bid, p_cvr with the ad's
category), so tests can predict the ranking without a trained model.
"""

from __future__ import annotations

import numpy as np

from embedding_cache import InMemoryStore
from exporters.manifest import ModelManifest, TensorSpec
from models.features import FeatureSpec
from models.history import FM_HISTORY, FM_HISTORY_MASK, USER_INDEX
from protos.adrank.v1 import ranking_pb2
from serving.backends.base import InferenceBackend, InferenceResult, ModelHandle

SPEC = FeatureSpec((40, 12, 16, 8, 6, 4, 24, 5), recent_k=5, dense_width=4)
NOW_MS = 1_700_000_000_000  # in the past: requests carrying it pass the future-skew check
FM = "fm-unit"
HISTORY_LEN, HISTORY_WIDTH = 4, 3


def handle(name: str = "vm", version: int = 1, *, fm_version: str = "none", history: bool = False) -> ModelHandle:
    inputs = [TensorSpec("sparse", "int64", ("batch", SPEC.n_fields)), TensorSpec("recent", "int64", ("batch", 5)),
              TensorSpec("dense", "float32", ("batch", SPEC.dense_width))]
    recorded: dict = {}
    if history:
        inputs += [TensorSpec(FM_HISTORY, "float32", (1, HISTORY_LEN, HISTORY_WIDTH)),
                   TensorSpec(FM_HISTORY_MASK, "float32", (1, HISTORY_LEN)),
                   TensorSpec(USER_INDEX, "int64", ("batch",))]
        recorded = {"fm_version": fm_version, "length": HISTORY_LEN, "width": HISTORY_WIDTH, "codec": "float32"}
    manifest = ModelManifest(name=name, version=version, fm_version=fm_version, feature_spec=SPEC.to_dict(),
                             inputs=tuple(inputs), outputs=(TensorSpec("p_ctr", "float32", ("batch",)),
                                                            TensorSpec("p_cvr", "float32", ("batch",))),
                             history=recorded)
    return ModelHandle(name, version, manifest, SPEC)


class FakeBackend(InferenceBackend):
    """Serves the given handles; `calls` records (handle, inputs) per infer."""

    name = "fake"

    def __init__(self, *handles: ModelHandle) -> None:
        self._handles = {(h.name, h.version): h for h in handles or (handle(),)}
        self.calls: list[tuple[ModelHandle, dict[str, np.ndarray]]] = []

    async def infer(self, handle: ModelHandle, inputs: dict[str, np.ndarray]) -> InferenceResult:
        self.calls.append((handle, inputs))
        return InferenceResult(*scores(inputs))


def scores(inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The fake model: p_ctr from log(1 + bid), p_cvr from the category's sparse index."""
    p_ctr = (1 / (1 + np.exp(-inputs["dense"][:, 0] + 1))).astype(np.float32)
    p_cvr = (0.1 + 0.01 * (inputs["sparse"][:, 3] % 7)).astype(np.float32)
    return p_ctr, p_cvr


def request(n: int = 5, **fields: object) -> ranking_pb2.ScoreRequest:
    """A valid request for user 7 with `n` candidates (bids 1..n, categories 0..n-1)."""
    req = ranking_pb2.ScoreRequest(request_id="req-1", user_id=7, request_time_ms=NOW_MS - 1000, **fields)
    req.context.placement, req.context.device = "feed", "ios"
    req.user.segment = 2
    req.user.recent_categories.extend([1, 2])
    for i in range(n):
        req.candidates.add(ad_id=100 + i, advertiser_id=i % 3, campaign_id=i % 4, category=i % 5, bid=1.0 + i)
    return req


def fm_store(users: tuple[int, ...] = (7,)) -> InMemoryStore:
    """An in-memory cache holding FM codes of `users` (two per user, before NOW_MS) under FM."""
    store = InMemoryStore()
    writer = store.writer(FM, dim=HISTORY_WIDTH, codec="float32")
    uids = np.repeat(np.asarray(users, np.int64), 2)
    ts = np.tile(np.array([NOW_MS - 10_000, NOW_MS - 5_000], np.int64), len(users))
    codes = np.arange(len(uids) * HISTORY_WIDTH, dtype=np.float32).reshape(len(uids), HISTORY_WIDTH) / 10
    writer.append_user_codes(uids, ts, codes)
    writer.publish()
    return store
