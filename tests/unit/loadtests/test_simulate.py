"""The traffic simulator against a fake scorer and a fake gRPC server: seeded, honest about its truth."""

from __future__ import annotations

from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest

from loadtests.simulate import DelayModel, SimulationConfig, main, run_simulation
from models.data.labels import read_labels
from models.data.synthetic import MS_PER_HOUR, START_MS, SyntheticConfig, build_world
from models.vocab import DEVICES, PLACEMENTS
from protos.adrank.v1 import ranking_pb2, ranking_pb2_grpc

WORLD = SyntheticConfig(n_events=10_000, seed=3)


class FakeRanker:
    """Ranks by bid and answers top_k; keeps every request it saw."""

    def __init__(self) -> None:
        self.requests: list[ranking_pb2.ScoreRequest] = []

    def __call__(self, req: ranking_pb2.ScoreRequest) -> ranking_pb2.ScoreResponse:
        self.requests.append(req)
        resp = ranking_pb2.ScoreResponse(request_id=req.request_id, request_time_ms=req.request_time_ms)
        bids = np.array([c.bid for c in req.candidates])
        for rank, j in enumerate(np.argsort(-bids, kind="stable")[:req.top_k or len(bids)], start=1):
            resp.candidates.add(ad_id=req.candidates[j].ad_id, request_index=int(j), p_ctr=0.1, p_cvr=0.2,
                                expected_value=0.02 * bids[j], rank=rank)
        return resp


def _run(tmp_path: Path, name: str, **config: object):
    ranker = FakeRanker()
    cfg = SimulationConfig(world=WORLD, seed=5, n_candidates=30, paced=False, **config)  # type: ignore[arg-type]
    return run_simulation(None, 50, 20, out=tmp_path / name, config=cfg, score=ranker), ranker


def test_runs_are_seeded_and_shown_impressions_are_the_top_k(tmp_path: Path) -> None:
    a, ranker = _run(tmp_path, "a")
    b, _ = _run(tmp_path, "b")
    assert a.requests == a.ok == 1_000 and a.errors == {}
    assert a.impressions == 3_000 and (a.clicks, a.conversions) == (b.clicks, b.conversions)
    la, lb = read_labels(a.labels_path), read_labels(b.labels_path)
    assert la.equals(lb)
    imps = la.filter(np.array(la.column("event").to_pylist()) == "impression").to_pylist()
    req0 = ranker.requests[0]
    top = sorted(req0.candidates, key=lambda c: -c.bid)[:3]
    assert [r["ad_id"] for r in imps[:3]] == [c.ad_id for c in top]
    assert all(r["request_id"] == req0.request_id for r in imps[:3])


def test_requests_come_from_the_world_in_simulated_time(tmp_path: Path) -> None:
    result, ranker = _run(tmp_path, "a", time_scale=120.0)
    world = build_world(WORLD)
    first = START_MS + WORLD.days * 24 * MS_PER_HOUR
    assert result.first_ms == first and result.last_ms == first + round(999 * 1000 * 120 / 50)
    for i, req in enumerate(ranker.requests[:50]):
        assert req.request_time_ms == first + round(i * 1000 * 120 / 50)
        assert req.context.placement in PLACEMENTS[:WORLD.n_placements]
        assert req.context.device in DEVICES[:WORLD.n_devices]
        assert req.user.segment == world.segment[req.user_id] and req.top_k == 3
        ads = np.array([c.ad_id for c in req.candidates])
        assert len(set(ads.tolist())) == 30
        np.testing.assert_array_equal([c.category for c in req.candidates], world.ad_cat[ads])
        np.testing.assert_array_equal(np.array([c.bid for c in req.candidates], np.float32), world.ad_bid[ads])


def test_labels_follow_the_truth_and_the_delay_model(tmp_path: Path) -> None:
    delays = DelayModel()
    result, _ = _run(tmp_path, "a")
    labels = read_labels(result.labels_path).to_pydict()
    truth = pq.read_table(result.truth_path).to_pydict()
    event = np.array(labels["event"])
    delay_s = (np.array(labels["event_ms"]) - np.array(labels["impression_ms"])) / 1000
    clicks = delay_s[event == "click"]
    assert clicks.min() >= delays.click_min_s and clicks.max() <= delays.click_max_s
    conv_after_imp = delay_s[event == "conversion"]
    assert conv_after_imp.min() >= delays.conversion_min_s + delays.click_min_s
    assert np.median(conv_after_imp) > 3_600  # conversions hours to days later
    # every conversion follows a click of the same impression
    key = [f"{r}/{a}" for r, a in zip(labels["request_id"], labels["ad_id"], strict=True)]
    clicked = {k for k, e in zip(key, event, strict=True) if e == "click"}
    assert all(k in clicked for k, e in zip(key, event, strict=True) if e == "conversion")
    # labels are draws from the recorded truth: the click rate matches the mean true p_click
    p = np.array(truth["p_click"])
    assert len(p) == result.impressions and np.all((p > 0) & (p < 1))
    assert abs(result.clicks / result.impressions - p.mean()) < 4 * np.sqrt(p.mean() / len(p))


def test_the_feature_store_sees_clicks_once_they_land(tmp_path: Path) -> None:
    result, ranker = _run(tmp_path, "a", time_scale=600.0)
    world = build_world(WORLD)
    labels = read_labels(result.labels_path).to_pydict()
    user_of = {r.request_id: r.user_id for r in ranker.requests}
    clicks = sorted((t, user_of[r], int(world.ad_cat[a])) for r, a, e, t in zip(
        labels["request_id"], labels["ad_id"], labels["event"], labels["event_ms"], strict=True) if e == "click")
    checked = 0
    for req in ranker.requests:
        before = [c for t, u, c in clicks if u == req.user_id and t < req.request_time_ms]
        if before:
            assert req.user.recent_categories[0] == before[-1]
            checked += 1
    assert checked > 20


def test_config_and_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="show_k"):
        SimulationConfig(world=WORLD, n_candidates=5, show_k=6)
    with pytest.raises(ValueError, match="placements"):
        SimulationConfig(world=SyntheticConfig(n_events=10_000, n_placements=9))
    with pytest.raises(ValueError, match="click delays"):
        DelayModel(click_median_s=0.5)
    with pytest.raises(ValueError, match="exactly one"):
        run_simulation("127.0.0.1:1", 1, 1, out=tmp_path, score=FakeRanker())
    assert main(["--target", "nocolon", "--out", str(tmp_path)]) == 2


class _Servicer(ranking_pb2_grpc.AdRankingServicer):
    def __init__(self) -> None:
        self.ranker = FakeRanker()
        self.refused = 0

    def Score(self, request, context):  # the gRPC method name
        if request.user_id % 7 == 0:
            self.refused += 1
            context.abort(grpc.StatusCode.UNAVAILABLE, "fake outage")
        return self.ranker(request)


def test_sends_to_a_grpc_target_and_counts_errors(tmp_path: Path) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = _Servicer()
    ranking_pb2_grpc.add_AdRankingServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        cfg = SimulationConfig(world=WORLD, seed=5, n_candidates=20, concurrency=4)
        result = run_simulation(f"127.0.0.1:{port}", 100, 1.0, out=tmp_path / "grpc", config=cfg,
                                request_log=tmp_path / "log")
    finally:
        server.stop(None)
    assert servicer.refused > 0 and result.errors == {"UNAVAILABLE": servicer.refused}
    assert result.requests == 100 and result.ok == len(servicer.ranker.requests) == 100 - servicer.refused
    assert result.impressions == 3 * result.ok and result.request_log_written == result.ok
    assert result.wall_s >= 0.9  # paced at 100 req/s
