"""The loop's first half end to end: simulated traffic → request log → labels → join → a VM trained on it.

Against a fake ranker (exact, and a VM is trained on the joined rows) and against the real ranking server
in a child process (the shared `tiny_run` model; about 7 s once it is built).
The join's counts are checked against a recount of the simulator's label file, done here apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from loadtests.simulate import SimulationConfig, run_simulation
from models.data.labels import read_labels
from models.data.requestlog import read_request_log
from models.data.schema import EventLog
from models.data.synthetic import SyntheticConfig
from models.logjoin import join_logs
from tests.unit.loadtests.test_simulate import FakeRanker

CLICK_W, CONV_W = 300.0, 86_400.0


def _recount(labels_path: str, click_w: float, conv_w: float) -> dict[str, int]:
    """Clicks / conversions inside and after the windows, straight from the label rows."""
    lab = read_labels(labels_path).to_pydict()
    first: dict[tuple[str, str, int], int] = {}
    for rid, ad, imp, ev, t in zip(lab["request_id"], lab["ad_id"], lab["impression_ms"], lab["event"],
                                   lab["event_ms"], strict=True):
        if ev != "impression":
            first[(ev, rid, ad)] = t - imp  # the simulator emits at most one of each per impression
    clicked = {(r, a) for (e, r, a), d in first.items() if e == "click" and d <= click_w * 1000}
    return {
        "impressions": lab["event"].count("impression"),
        "clicks": len(clicked),
        "late_clicks": sum(1 for (e, _, _), d in first.items() if e == "click" and d > click_w * 1000),
        "conversions": sum(1 for (e, r, a), d in first.items()
                           if e == "conversion" and d <= conv_w * 1000 and (r, a) in clicked),
        "late_conversions": sum(1 for (e, _, _), d in first.items() if e == "conversion" and d > conv_w * 1000),
    }


def _check_join(result, log_dir: Path) -> EventLog:
    events, report, _ = join_logs(log_dir, result.labels_path, click_window_s=CLICK_W, conversion_window_s=CONV_W)
    expected = _recount(result.labels_path, CLICK_W, CONV_W)
    assert report.rows == len(events) == expected["impressions"] == result.impressions
    for key in ("clicks", "late_clicks", "conversions", "late_conversions"):
        assert getattr(report, key) == expected[key], key
    assert report.unlogged_impressions == report.unknown_candidates == report.orphan_labels == 0
    assert report.late_conversions > 0  # a day's window misses some of the days-long conversions
    return events


def test_simulate_join_train_against_a_fake_ranker(tmp_path: Path) -> None:
    from models.train import TrainConfig, fit_vm, prepare_vm_data

    world = SyntheticConfig(n_events=10_000, seed=1)
    config = SimulationConfig(world=world, seed=2, n_candidates=40, show_k=4, paced=False, time_scale=600)
    result = run_simulation(None, 50, 40, out=tmp_path / "sim", config=config, score=FakeRanker(),
                            request_log=tmp_path / "log")
    assert result.request_log_written == result.ok == 2_000
    events = _check_join(result, tmp_path / "log")
    assert np.all(np.diff(events["ts_ms"]) >= 0)
    data = prepare_vm_data(events, TrainConfig.for_dataset(events.source, epochs=1))
    trained = fit_vm(data, train_config=TrainConfig.for_dataset(events.source, epochs=1), progress=False)
    test = trained.metrics["test"]
    print(f"VM trained on {len(data.train_idx)} joined rows: test CTR AUC {test['ctr_auc']:.3f}")
    assert test["ctr_n"] == len(data.test_idx) and 0.0 <= test["ctr_auc"] <= 1.0
    assert "oracle_ctr_auc" not in test  # online, the truth is unknown: no oracle figures from a joined log


def test_simulate_against_the_real_server(tiny_run: Path, tmp_path: Path) -> None:
    from serving.process import ServerProcess

    world = SyntheticConfig(n_events=20_000, seed=0)  # the world tiny_run's VM was trained on
    config = SimulationConfig(world=world, seed=4, n_candidates=50, concurrency=4, time_scale=3_600)
    with ServerProcess(["--repository", str(tiny_run / "model_repository")]) as server:
        result = run_simulation(server.target, 40, 5, out=tmp_path / "sim", config=config,
                                request_log=tmp_path / "log")
    assert result.errors == {} and result.ok == result.requests == 200
    log = read_request_log(tmp_path / "log")
    assert set(log.column("model_name").to_pylist()) == {"vm"}
    assert all(len(o) == 3 for o in log.column("order").to_pylist())
    _check_join(result, tmp_path / "log")


def test_a_vm_retrained_on_the_log_is_scored_on_the_next_stretch_against_the_oracle(tmp_path: Path) -> None:
    """`logs eval`: a VM trained on one stretch of simulated traffic scores the stretch after it; the
    oracle figures are the truth file's, recomputed here; context rows must be earlier; truth must match."""
    import pyarrow.parquet as pq
    import pytest

    from loadtests.simulate import start_after
    from models.logeval import evaluate_later_traffic
    from models.metrics import summarize
    from models.train import TrainConfig, fit_vm, prepare_vm_data, save_checkpoint

    world = SyntheticConfig(n_events=10_000, seed=1)
    first = SimulationConfig(world=world, seed=2, n_candidates=40, show_k=4, paced=False, time_scale=600)
    a = run_simulation(None, 50, 40, out=tmp_path / "a", config=first, score=FakeRanker(), request_log=tmp_path / "la")
    events = _check_join(a, tmp_path / "la")
    events.save(tmp_path / "joined.npz")
    tc = TrainConfig.for_dataset(events.source, epochs=1)
    ckpt = save_checkpoint(fit_vm(prepare_vm_data(events, tc), train_config=tc, progress=False), tmp_path / "vm.pt")
    start = start_after(tmp_path / "a" / "summary.json", 3, 50, 600)
    assert start > a.last_ms
    with pytest.raises(ValueError, match="request ids would repeat"):
        start_after(tmp_path / "a" / "summary.json", 2, 50, 600)
    nxt = SimulationConfig(world=world, seed=3, n_candidates=40, show_k=4, paced=False, time_scale=600, start_ms=start)
    b = run_simulation(None, 50, 10, out=tmp_path / "b", config=nxt, score=FakeRanker(), request_log=tmp_path / "lb")
    report = evaluate_later_traffic(ckpt, tmp_path / "lb", b.labels_path, b.truth_path, context=tmp_path / "joined.npz",
                                    click_window_s=CLICK_W, conversion_window_s=CONV_W)
    assert report["impressions"] == b.impressions and report["context_rows"] == len(events)
    assert report["first_ms"] >= start
    truth = pq.read_table(b.truth_path).to_pydict()
    joined, _, ids = join_logs(tmp_path / "lb", b.labels_path, click_window_s=CLICK_W, conversion_window_s=CONV_W)
    p_true = dict(zip(zip(truth["request_id"], truth["ad_id"], strict=True), truth["p_click"], strict=True))
    oracle = summarize(joined["click"], np.array([p_true[(r, int(x))] for r, x in zip(ids, joined["ad_id"],
                                                                                          strict=True)], np.float32))
    assert report["oracle"]["ctr_auc"] == pytest.approx(oracle["auc"]) and report["oracle"]["ctr_ne"] < 1.0
    lo, hi = report["model"]["ctr_auc_interval_95"]
    assert lo <= report["model"]["ctr_auc"] <= hi and 0.0 <= lo <= hi <= 1.0
    with pytest.raises(ValueError, match="must all be earlier"):  # the later stretch is no context for itself
        evaluate_later_traffic(ckpt, tmp_path / "la", a.labels_path, a.truth_path, context=tmp_path / "joined.npz")
    with pytest.raises(ValueError, match="no row in"):  # another simulation's truth file
        evaluate_later_traffic(ckpt, tmp_path / "lb", b.labels_path, a.truth_path)
