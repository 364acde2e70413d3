"""The live monitors against real processes: a LoopFM server logging requests with a transfer sample,
simulated traffic with delayed labels, the join, and `adrank monitor --serve-metrics`. Every series is
checked against a recomputation done here apart from the code that exported it: calibration and the
live transfer ratio from the log and the label file joined by request id (the monitor matches by
time, user and ad), staleness from the logged snapshot re-read at each logged request time, hit rate
and degraded share from the logged flags."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from embedding_cache import open_reader
from embedding_cache.metrics import STALENESS_BUCKETS_MS
from loadtests.simulate import SimulationConfig, run_simulation
from models.data.labels import read_labels
from models.data.requestlog import read_request_log
from models.data.synthetic import SyntheticConfig
from serving.process import ServerProcess
from serving.requestlog import sampled

pytestmark = pytest.mark.slow  # one module fixture: a server, 1,240 requests, the join and a monitor (~30 s)

TRANSFER_SAMPLE = 0.3
CLICK_W, CONV_W = 3_600.0, 7 * 86_400.0
N_REQUESTS = 1_200
N_COLD = 40  # requests of users the cache has no history for (scored with the prior, flagged)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of `name` on a /metrics page, keyed by its sorted label pairs."""
    out = {}
    for m in re.finditer(rf"^{name}(?:{{([^}}]*)}})? (\S+)$", text, re.MULTILINE):
        labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(1) or "")))
        out[labels] = float(m.group(2))
    return out


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


class MonitorProcess:
    """`adrank monitor --serve-metrics` in a child process, stopped with SIGTERM."""

    def __init__(self, args: list[str]) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "adrank", "monitor", *args, "--serve-metrics",
                                      str(self.port), "--refresh-s", "3600"], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)

    def __enter__(self) -> MonitorProcess:
        line = self.proc.stdout.readline()  # printed once the first computation is done and the port bound
        assert "monitor metrics on" in line, line + self.proc.stdout.read() if self.proc.poll() is not None else line
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        assert self.proc.wait(timeout=10) == 0


@pytest.fixture(scope="module")
def loop(loopfm_run, tmp_path_factory):
    """Simulated traffic against a logging LoopFM server, its /metrics after the traffic, the join, and
    the monitor's /metrics."""
    from adrank.cli import main

    root = tmp_path_factory.mktemp("monitors")
    log_dir, metrics_port = root / "requestlog", free_port()
    world = SyntheticConfig(n_events=20_000, seed=0)  # the world loopfm_run's VM was trained on
    config = SimulationConfig(world=world, seed=5, n_candidates=40, concurrency=4, paced=False, time_scale=3_600,
                              model="vm_loopfm")
    args = ["--repository", str(loopfm_run["repo"]), "--model", "vm_loopfm", "--cache-dir", str(loopfm_run["cache"]),
            "--request-log", str(log_dir), "--metrics-port", str(metrics_port),
            "--transfer-sample", str(TRANSFER_SAMPLE), "--drain-delay-s", "0"]
    with ServerProcess(args) as server:
        result = run_simulation(server.target, 100, N_REQUESTS / 100, out=root / "sim", config=config)
        _score_cold_users(server.target, loopfm_run)
        server_metrics = scrape(metrics_port)
    assert result.errors == {} and result.ok == N_REQUESTS
    joined = root / "joined.npz"
    assert main(["logs", "join", "--request-log", str(log_dir), "--labels", str(result.labels_path),
                 "--click-window", str(CLICK_W), "--conversion-window", str(CONV_W), "--out", str(joined)]) == 0
    with MonitorProcess(["--joined", str(joined), "--request-log", str(log_dir),
                         "--repository", str(loopfm_run["repo"])]) as monitor:
        monitor_metrics = scrape(monitor.port)
    return {"log": log_dir, "labels": result.labels_path, "server": server_metrics, "monitor": monitor_metrics,
            "joined": joined}


def _score_cold_users(target: str, loopfm_run) -> None:
    import grpc

    from models.catalog import load_catalog
    from protos.adrank.v1 import ranking_pb2_grpc
    from serving.client import build_request

    catalog, rng = load_catalog(loopfm_run["dir"] / "catalog.npz"), np.random.default_rng(8)
    t = int(loopfm_run["events"]["ts_ms"][-1])
    with grpc.insecure_channel(target) as ch:
        stub = ranking_pb2_grpc.AdRankingStub(ch)
        for i in range(N_COLD):
            stub.Score(build_request(10**9 + i, 20, catalog, rng=rng, request_time_ms=t, request_id=f"cold-{i}"),
                       timeout=10)


def _shown(loop) -> dict[str, np.ndarray]:
    """Per shown impression, by request id (not the monitor's key): served and no-history pCTR and pCVR,
    click and conversion inside the windows."""
    log = {r["request_id"]: r for r in read_request_log(loop["log"]).to_pylist()}
    lab = read_labels(loop["labels"]).to_pydict()
    events: dict[tuple[str, str, int], int] = {}
    for rid, ad, imp, ev, t in zip(lab["request_id"], lab["ad_id"], lab["impression_ms"], lab["event"],
                                   lab["event_ms"], strict=True):
        events.setdefault((ev, rid, ad), t - imp)
    cols: dict[str, list] = {k: [] for k in ("p_ctr", "p_cvr", "p_ctr_nh", "click", "conv", "rid")}
    for (ev, rid, ad), _ in list(events.items()):
        if ev != "impression":
            continue
        row = log[rid]
        i = row["ad_id"].index(ad)
        click = events.get(("click", rid, ad), 1e18) <= CLICK_W * 1000
        conv = click and events.get(("conversion", rid, ad), 1e18) <= CONV_W * 1000
        cols["p_ctr"].append(row["p_ctr"][i])
        cols["p_cvr"].append(row["p_cvr"][i])
        cols["p_ctr_nh"].append(row["p_ctr_no_history"][i] if row["p_ctr_no_history"] else np.nan)
        cols["click"].append(float(click))
        cols["conv"].append(float(conv))
        cols["rid"].append(rid)
    out = {k: np.array(v, dtype=object if k == "rid" else np.float64) for k, v in cols.items()}
    out["p_ctr"] = out["p_ctr"].astype(np.float32).astype(np.float64)
    return out


def _ne(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p.astype(np.float32).astype(np.float64), 1e-7, 1 - 1e-7)
    base = y.mean()
    entropy = -(base * np.log(base) + (1 - base) * np.log(1 - base))
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)) / entropy)


KEY = (("arm", "live"), ("model", "vm_loopfm"), ("version", "1"))


def test_calibration_series_match_a_recount_from_the_log_and_labels(loop) -> None:
    shown = _shown(loop)
    m = loop["monitor"]
    clicked = shown["click"] > 0
    assert samples(m, "adrank_monitor_impressions")[KEY] == len(shown["click"]) > 3_000
    assert samples(m, "adrank_monitor_clicks")[KEY] == clicked.sum() > 100
    assert samples(m, "adrank_monitor_conversions")[KEY] == shown["conv"].sum()
    cal = shown["p_ctr"].mean() / shown["click"].mean()
    assert samples(m, "adrank_monitor_ctr_calibration")[KEY] == pytest.approx(cal, rel=1e-9)
    cvr_cal = shown["p_cvr"][clicked].astype(np.float32).astype(np.float64).mean() / shown["conv"][clicked].mean()
    assert samples(m, "adrank_monitor_cvr_calibration")[KEY] == pytest.approx(cvr_cal, rel=1e-6)
    print(f"pCTR calibration {cal:.3f} over {len(shown['click'])} joined impressions")


def test_live_transfer_ratio_matches_a_recount_and_the_offline_gain_of_the_manifest(loop, loopfm_run) -> None:
    log = read_request_log(loop["log"], columns=["request_id", "p_ctr_no_history", "ad_id"]).to_pylist()
    in_sample = {r["request_id"] for r in log if r["p_ctr_no_history"]}
    assert in_sample == {r["request_id"] for r in log if sampled(r["request_id"], TRANSFER_SAMPLE)}
    assert 0.2 * len(log) < len(in_sample) < 0.4 * len(log)
    shown = _shown(loop)
    s = ~np.isnan(shown["p_ctr_nh"])
    y = shown["click"][s]
    ne_served, ne_masked = _ne(y, shown["p_ctr"][s]), _ne(y, shown["p_ctr_nh"][s])
    online = (ne_masked - ne_served) / ne_masked
    manifest = json.loads((loopfm_run["repo"] / "vm_loopfm" / "1" / "manifest.json").read_text())["metrics"]
    ne_off, ne_off_masked = manifest["test"]["ctr_ne"], manifest["test_no_history"]["ctr_ne"]
    offline = (ne_off_masked - ne_off) / ne_off_masked
    m = loop["monitor"]
    assert samples(m, "adrank_monitor_transfer_impressions")[KEY] == s.sum()
    assert samples(m, "adrank_monitor_ne")[tuple(sorted((*KEY, ("history", "served"))))] == pytest.approx(ne_served)
    assert samples(m, "adrank_monitor_ne")[tuple(sorted((*KEY, ("history", "masked"))))] == pytest.approx(ne_masked)
    assert samples(m, "adrank_monitor_online_ne_gain")[KEY] == pytest.approx(online)
    assert samples(m, "adrank_monitor_offline_ne_gain")[KEY] == pytest.approx(offline)
    # the fixture's codes are not an FM's (they carry no signal), so its offline gain may be negative:
    # a ratio of two losses is not a transfer ratio, and the series is NaN then (models.metrics' rule)
    ratio = online / offline if offline > 0 else float("nan")
    assert online != 0 and offline != 0
    assert samples(m, "adrank_monitor_live_transfer_ratio")[KEY] == pytest.approx(ratio, nan_ok=True)
    scored = samples(loop["server"], "adrank_transfer_samples_total")
    assert scored[(("outcome", "scored"),)] == len(in_sample)
    print(f"FM history NE gain: online {online:.2%} on {s.sum()} impressions, offline {offline:.2%}, "
          f"live TR {ratio:.2f}")


def test_staleness_hit_rate_and_degraded_series_match_the_logged_requests(loop, loopfm_run) -> None:
    log = read_request_log(loop["log"], columns=["user_id", "request_time_ms", "snapshot_id", "flags"]).to_pylist()
    assert len(log) == N_REQUESTS + N_COLD
    missing = [r for r in log if "FLAG_USER_HISTORY_MISSING" in r["flags"]]
    with_history = [r for r in log if "FLAG_USER_HISTORY_MISSING" not in r["flags"]]
    assert len(missing) == N_COLD and with_history
    (snapshot,) = {r["snapshot_id"] for r in log}
    reader = open_reader("embedded", loopfm_run["cache"], "fm-test01", snapshot_id=snapshot)
    stale = []
    for r in with_history:  # the newest code strictly before the request time, in the logged snapshot
        hb, _, _ = reader.lookup(r["user_id"], r["request_time_ms"], 8, np.zeros(0, np.int64))
        stale.append(r["request_time_ms"] - int(hb.timestamps[0, 0]))
    text = loop["server"]
    fm = (("backend", "embedded"), ("fm_version", "fm-test01"))
    buckets = {dict(k)["le"]: v for k, v in samples(text, "adrank_cache_staleness_ms_bucket").items()}
    for bound in STALENESS_BUCKETS_MS:
        assert buckets[str(bound)] == sum(s <= bound for s in stale), bound
    assert buckets["+Inf"] == samples(text, "adrank_cache_staleness_ms_count")[fm] == len(with_history)
    assert samples(text, "adrank_cache_staleness_ms_sum")[fm] == pytest.approx(sum(stale))
    assert samples(text, "adrank_cache_hit_rate")[fm] == pytest.approx(len(with_history) / len(log))
    assert samples(text, "adrank_cache_user_hits_total")[fm] == len(with_history)
    age = samples(text, "adrank_cache_snapshot_age_ms")[fm]
    assert 0 < age < (time.time() * 1000 - reader.metrics.snapshot_created_ms) + 1000
    degraded = samples(text, "adrank_degraded_requests_total")
    assert degraded[(("reason", "user_history_missing"),)] == len(missing)
    assert sum(samples(text, "adrank_score_requests_total").values()) == len(log)


DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "adrank.json"


def exported_names(text: str) -> set[str]:
    """Every series name a /metrics page can be queried by: sampled names, and for each declared family
    (a labelled family may have no sample yet) the names its type exports."""
    names = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:{|\s)", text, re.MULTILINE))
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "gauge": ("",), "summary": ("", "_sum", "_count")}
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        names |= {name + s for s in suffixes.get(kind, ("",))}
    return names


def test_every_dashboard_query_names_a_metric_the_server_or_the_monitor_exports(loop) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    exported = exported_names(loop["server"]) | exported_names(loop["monitor"])
    # a labelled family shows on /metrics only once a child exists (a deadline expired, say): those may
    # be queried if the server declares them, and every other name must be on a real scrape
    from serving.metrics import ServiceMetrics

    declared = {m.name + "_total" for m in ServiceMetrics().registry.collect() if m.type == "counter"}
    queried: set[str] = set()
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
            names = set(re.findall(r"\badrank_[a-zA-Z0-9_]+", expr))
            assert names, f"{panel['title']}: {expr} names no adrank metric"
            missing = names - exported - (declared - {"adrank_score_requests_total"})
            assert not missing, f"{panel['title']}: {sorted(missing)} not on the server's or the monitor's /metrics"
            queried |= names
    # the acceptance series are on the dashboard: calibration, live TR, staleness, hit rate, stages, degraded
    for name in ("adrank_monitor_ctr_calibration", "adrank_monitor_live_transfer_ratio",
                 "adrank_cache_staleness_ms_bucket", "adrank_cache_user_hits_total",
                 "adrank_stage_latency_seconds_bucket",
                 "adrank_degraded_requests_total", "adrank_requestlog_records_dropped_total"):
        assert name in queried, name
