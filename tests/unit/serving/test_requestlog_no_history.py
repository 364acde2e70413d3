"""The transfer sample: sampled LoopFM requests scored again with FM history masked out after the
response is built, both score sets in the log row; busy and failed second scorings counted, the
record still logged."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import serving_fakes as fakes

from models.data.requestlog import read_request_log
from models.history import FM_HISTORY, FM_HISTORY_MASK
from serving.config import ServerConfig
from serving.history import HistoryProvider
from serving.metrics import ServiceMetrics
from serving.pipeline import Pipeline, RequestContext
from serving.requestlog import RequestLogSink, SinkConfig, sampled
from serving.requestlog.no_history import NoHistoryScorer
from serving.requestlog.recorder import logging_encode


class HistoryAwareBackend(fakes.FakeBackend):
    """The fake model plus the mean of the masked history codes, so masking changes p_ctr."""

    def __init__(self, *handles, fail: bool = False) -> None:
        super().__init__(*handles)
        self.fail = fail

    async def infer(self, handle, inputs):
        if self.fail and not inputs[FM_HISTORY_MASK].any():
            raise RuntimeError("no-history path down")
        result = await super().infer(handle, inputs)
        shift = float((inputs[FM_HISTORY] * inputs[FM_HISTORY_MASK][..., None]).sum()) / 10
        return type(result)(np.clip(result.p_ctr + np.float32(shift), 0, 1).astype(np.float32), result.p_cvr)


def _run(tmp_path: Path, n_requests: int, rate: float, *, fail: bool = False, max_in_flight: int = 32):
    handle = fakes.handle("vm_fm", fm_version=fakes.FM, history=True)
    backend = HistoryAwareBackend(handle, fail=fail)
    metrics = ServiceMetrics()
    sink = RequestLogSink(SinkConfig(folder=str(tmp_path)), registry=metrics.registry)
    scorer = NoHistoryScorer(backend, rate, max_in_flight=max_in_flight, registry=metrics.registry)
    pipeline = Pipeline.build(ServerConfig(default_model="vm_fm"), backend,
                              HistoryProvider("memory", fakes.fm_store())).wrap(
        "encode", logging_encode(sink, no_history=scorer))

    async def go():
        responses = []
        for i in range(n_requests):
            req = fakes.request(4)
            req.request_id = f"q{i}"
            responses.append(await pipeline.run(req, RequestContext.begin()))
        await scorer.drain()
        return responses

    responses = asyncio.run(go())
    sink.close()
    return responses, read_request_log(tmp_path).to_pylist(), metrics, backend


def _count(metrics: ServiceMetrics, outcome: str) -> float:
    return metrics.registry.get_sample_value("adrank_transfer_samples_total", {"outcome": outcome}) or 0.0


def test_sampled_requests_carry_scores_without_history_and_the_rest_none(tmp_path: Path) -> None:
    responses, rows, metrics, backend = _run(tmp_path, 60, 0.3)
    want = {f"q{i}" for i in range(60) if sampled(f"q{i}", 0.3)}
    assert 5 < len(want) < 40 and len(rows) == 60
    got = {r["request_id"] for r in rows if r["p_ctr_no_history"]}
    assert got == want and _count(metrics, "scored") == len(want)
    assert len(backend.calls) == 60 + len(want)
    masked_calls = [inputs for _, inputs in backend.calls if not inputs[FM_HISTORY_MASK].any()]
    assert len(masked_calls) == len(want)  # user 7 has history: only the second scorings are masked
    for row in rows:
        if row["request_id"] in want:
            served, masked = np.array(row["p_ctr"], np.float32), np.array(row["p_ctr_no_history"], np.float32)
            assert len(masked) == len(served) == 4 and (served != masked).all()
            assert row["p_cvr_no_history"] == row["p_cvr"]  # the fake's p_cvr ignores history
        else:
            assert row["p_cvr_no_history"] == []
    by_id = {r["request_id"]: r for r in rows}
    for resp in responses:  # the response carries the served scores, never the second ones
        for c in resp.candidates:
            assert np.float32(c.p_ctr) == np.float32(by_id[resp.request_id]["p_ctr"][c.request_index])


def test_a_failed_second_scoring_is_counted_and_the_record_logged_without_it(tmp_path: Path) -> None:
    _, rows, metrics, _ = _run(tmp_path, 40, 1.0, fail=True, max_in_flight=64)
    assert len(rows) == 40 and all(r["p_ctr_no_history"] == [] for r in rows)
    assert _count(metrics, "error") == 40 and _count(metrics, "scored") == 0


def test_second_scorings_over_the_in_flight_limit_are_skipped_and_counted(tmp_path: Path) -> None:
    handle = fakes.handle("vm_fm", fm_version=fakes.FM, history=True)
    metrics = ServiceMetrics()
    scorer = NoHistoryScorer(HistoryAwareBackend(handle), 1.0, max_in_flight=2, registry=metrics.registry)
    got: list = []

    async def go():
        from serving.pipeline.values import Ranking

        ranking = _ranking(handle, Ranking)
        for _ in range(5):  # nothing awaits in between: the first two are in flight, three are busy
            scorer.submit(ranking, lambda p, q: got.append(p))
        await scorer.drain()

    asyncio.run(go())
    assert _count(metrics, "busy") == 3 and _count(metrics, "scored") == 2
    assert sum(g is None for g in got) == 3 and sum(g is not None for g in got) == 2


def test_models_without_fm_history_are_never_sampled() -> None:
    scorer = NoHistoryScorer(fakes.FakeBackend(), 1.0)
    assert not scorer.wants("q1", fakes.handle())
    assert scorer.wants("q1", fakes.handle(fm_version=fakes.FM, history=True))
    assert not NoHistoryScorer(fakes.FakeBackend(), 0.0).wants("q1", fakes.handle(fm_version=fakes.FM, history=True))


def _ranking(handle, ranking_type):
    from serving.pipeline.values import ParsedRequest

    n = 3
    request = ParsedRequest(
        request_id="r", user_id=7, request_time_ms=fakes.NOW_MS, time_defaulted=False, placement="feed",
        device="ios", hour=3, segment=2, recent_categories=np.array([1], np.int64), ad_id=np.arange(n),
        advertiser_id=np.zeros(n, np.int64), campaign_id=np.zeros(n, np.int64), category=np.zeros(n, np.int64),
        bid=np.ones(n), dense=np.zeros((n, 0), np.float32), model_name="vm_fm", model_version=1)
    empty = np.zeros(0)
    return ranking_type(request, handle, "fake", empty, empty, empty, empty, empty)
