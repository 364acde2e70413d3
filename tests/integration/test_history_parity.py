"""Online/offline parity: test-split examples replayed as requests through the real gRPC server build model
inputs (FM history included) equal, bit for bit, to the tensors the VM was trained and evaluated on.

The server is the project's `RankingServer` on a real port and a real channel; its embedded backend is
wrapped by a recorder that keeps the inputs of every `infer` call (the wrap is one stage swapped, the rest
of the request path untouched), so the comparison sees exactly what the model would.
"""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
import torch

from embedding_cache import open_reader
from models.embed import cache_history
from models.features import DEVICES, PLACEMENTS, FeatureSpec, features_from_events
from models.history import HISTORY_INPUTS
from models.train import TrainConfig, load_checkpoint, prepare_vm_data
from protos.adrank.v1 import ranking_pb2, ranking_pb2_grpc
from serving.backends.base import InferenceBackend, InferenceResult, ModelHandle
from serving.backends.embedded import EmbeddedBackend
from serving.config import ServerConfig
from serving.server import RankingServer

N_EXAMPLES = 1_000


class RecordingBackend(InferenceBackend):
    """Delegates to a real backend and keeps a copy of every batch of model inputs it is given."""

    def __init__(self, inner: InferenceBackend) -> None:
        self.inner, self.name, self.seen = inner, inner.name, []

    @property
    def _handles(self):  # noqa: ANN202 - the inner backend's loaded versions
        return self.inner._handles

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def infer(self, handle: ModelHandle, inputs: dict[str, np.ndarray]) -> InferenceResult:
        self.seen.append({k: np.array(v, copy=True) for k, v in inputs.items()})
        return await self.inner.infer(handle, inputs)


def _request(events, recent: np.ndarray, r: int) -> ranking_pb2.ScoreRequest:
    req = ranking_pb2.ScoreRequest(request_id=f"row-{r}", user_id=int(events["user_id"][r]),
                                   request_time_ms=int(events["ts_ms"][r]))
    req.context.placement = PLACEMENTS[int(events["placement"][r])]
    req.context.device = DEVICES[int(events["device"][r])]
    req.context.hour_of_day = int(events["hour"][r])
    req.user.segment = int(events["user_segment"][r])
    req.user.recent_categories.extend(int(c) for c in recent[r] if c >= 0)
    req.candidates.add(ad_id=int(events["ad_id"][r]), advertiser_id=int(events["advertiser_id"][r]),
                       campaign_id=int(events["campaign_id"][r]), category=int(events["category"][r]),
                       bid=float(events["bid"][r]))
    return req


async def _replay(config: ServerConfig, backend: RecordingBackend, requests: list) -> list:
    server = RankingServer(config, backend=backend)
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ranking_pb2_grpc.AdRankingStub(channel)
            return [await stub.Score(req, timeout=10) for req in requests]
    finally:
        await server.stop(0)


@pytest.mark.slow
def test_served_inputs_equal_training_tensors_bit_for_bit(loopfm_run):
    events = loopfm_run["events"]
    assert int(events["placement"].max()) < len(PLACEMENTS) and int(events["device"].max()) < len(DEVICES)
    model, payload = load_checkpoint(loopfm_run["dir"] / "vm_loopfm.pt")
    spec = FeatureSpec.from_dict(payload["feature_spec"])
    data = prepare_vm_data(events, TrainConfig(epochs=1))
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(data.test_idx, size=N_EXAMPLES, replace=False))

    offline = features_from_events(spec, events)
    history = cache_history(open_reader("embedded", loopfm_run["cache"], "fm-test01"), events, "fm-test01")
    offline_hist = history(rows, model.config.history_len)
    # the recent-click categories a feature store would hand the caller: the training feature's raw ids
    from models.features import recent_categories_from_log

    recent = recent_categories_from_log(events["user_id"], events["ts_ms"], events["category"], events["click"],
                                        spec.recent_k)
    config = ServerConfig(port=0, model_repository=str(loopfm_run["repo"]), default_model="vm_loopfm",
                          cache_backend="embedded", cache_location=str(loopfm_run["cache"]))
    backend = RecordingBackend(EmbeddedBackend(config.model_repository))
    responses = asyncio.run(_replay(config, backend, [_request(events, recent, int(r)) for r in rows]))

    assert len(backend.seen) == N_EXAMPLES
    mismatched = []
    for i, (r, got, resp) in enumerate(zip(rows, backend.seen, responses, strict=True)):
        assert resp.served_by.model_version == 1 and resp.served_by.fm_version == "fm-test01"
        want = {k: offline[k][r:r + 1] for k in ("sparse", "recent", "dense")}
        want.update({k: offline_hist[k][i:i + 1] for k in HISTORY_INPUTS[:2]})
        want[HISTORY_INPUTS[2]] = np.zeros(1, np.int64)
        for name, value in want.items():
            if got[name].dtype != value.dtype or not np.array_equal(got[name], value):
                mismatched.append((int(r), name))
    assert mismatched == [], f"{len(mismatched)} served tensors differ from training, first {mismatched[:5]}"

    # and the served score is the trained model's score on those tensors (ONNX vs eager: float tolerance)
    with torch.no_grad():
        ref = model(*(torch.from_numpy(np.concatenate([g[k] for g in backend.seen[:200]])) if k != "user_index"
                      else torch.arange(200) for k in model.config.input_names))[0].numpy()
    served = np.array([resp.candidates[0].p_ctr for resp in responses[:200]], np.float32)
    np.testing.assert_allclose(served, ref, atol=1e-5)
