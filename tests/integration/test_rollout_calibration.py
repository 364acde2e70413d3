"""Calibration against delayed labels decides a rollout, with every part real: a logging `adrank serve`
with a SQLite registry, simulated users of the synthetic world whose clicks are drawn from its truth
(`loadtests.simulate`, labels minutes after the impression in simulated time), `adrank logs join`, and
`adrank monitor --serve-metrics`, whose /metrics page is the spec's label source.

The canary v2 scores p_ctr × 2: with the PSI and mean-ratio checks opened wide, only calibration can
catch it. Before labels exist the check is skipped, and says so in `status`, and the last step holds
instead of promoting; once the join has ≥ min_labelled impressions per arm, the canary/live ratio is
out of bound and the canary is rolled back with "calibration" in the audited reason. A copy of the live
model (v3) then passes calibration and is promoted."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
from rollout_versions import copy_version
from score_loop import ScoreLoop

from embedding_cache.redis_local import free_port
from loadtests.simulate import SimulationConfig, run_simulation
from models.catalog import load_catalog
from models.data.labels import read_labels, write_labels
from models.data.requestlog import read_request_log
from models.data.synthetic import SyntheticConfig
from protos.adrank.v1 import ranking_pb2_grpc
from serving.process import ServerProcess
from serving.security.auth import hash_token

pytestmark = pytest.mark.slow  # a server, 150 + 2 × 1,200 simulated requests, three joins, a monitor (~25 s)

TOKEN = "calibration-operator-token-0123456789"
AUTH = [("authorization", f"Bearer {TOKEN}")]
N_REQUESTS, MIN_LABELLED = 1_200, 600
SPEC = """model = "vm"
version = {version}
steps = [50]
interval_s = 1
threshold = 2

[checks]
min_requests = 5
max_error_rate = 0.0
max_p99_latency_ratio = 100.0
max_psi = 10.0                 # opened wide: only calibration may judge the scores
p_ctr_ratio = [0.01, 100]
calibration = [0.67, 1.5]
min_labelled = {min_labelled}

[preflight]
max_embedding_age_s = 1e12

[labels]
monitor_url = "http://127.0.0.1:{port}/metrics"
timeout_s = 2
"""


class Monitor:
    """`adrank monitor --serve-metrics` on a fixed port, re-reading the joined file every 0.3 s."""

    def __init__(self, port: int, args: list[str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "adrank", "monitor", *args, "--serve-metrics", str(port),
                                      "--refresh-s", "0.3"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)

    def __enter__(self) -> Monitor:
        line = self.proc.stdout.readline()
        assert "monitor metrics on" in line, line
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def _cli(srv: ServerProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adrank", "rollout", *args, "--target", srv.target, "--actor", "ops"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "ADRANK_TOKEN": TOKEN})


def _simulate(srv: ServerProcess, out: Path, seed: int, start_ms: int | None, n: int = N_REQUESTS):
    """Simulated users scored through an authenticated channel; their labels land in out/labels.parquet."""
    world = SyntheticConfig(n_events=20_000, seed=0)  # the world tiny_run's VM was trained on
    config = SimulationConfig(world=world, seed=seed, n_candidates=40, paced=False, time_scale=3_600,
                              start_ms=start_ms)
    with srv.channel() as ch:
        stub = ranking_pb2_grpc.AdRankingStub(ch)
        result = run_simulation(None, 100, n / 100, out=out, config=config,
                                score=lambda r: stub.Score(r, timeout=10, metadata=AUTH))
    assert result.ok == n and result.errors == {}
    return result


def _join(log_dir: Path, label_files: list[str], out: Path) -> None:
    from adrank.cli import main

    table = pa.concat_tables([read_labels(f) for f in label_files])
    needed = set(table.column("request_id").to_pylist())
    deadline = time.monotonic() + 20
    while not needed <= set(read_request_log(log_dir, columns=["request_id"]).column("request_id").to_pylist()):
        assert time.monotonic() < deadline, "the server's request log did not publish every simulated request"
        time.sleep(0.2)  # the sink publishes a file every --request-log-rotate-s
    labels = out.with_name("labels.parquet")
    write_labels(labels, table)
    assert main(["logs", "join", "--request-log", str(log_dir), "--labels", str(labels), "--click-window", "3600",
                 "--conversion-window", "604800", "--out", str(out)]) == 0


def _until(srv: ServerProcess, timeout_s: float, *texts: str) -> str:
    """`status` once it shows one of `texts` (or the last one seen at the timeout)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        out = _cli(srv, "status", "--model", "vm").stdout
        if any(t in out for t in texts):
            return out
        time.sleep(0.5)
    return out


def _until_done(srv: ServerProcess, timeout_s: float) -> str:
    return _until(srv, timeout_s, "phase rolled_back", "phase promoted")


def test_calibration_rolls_back_a_miscalibrated_canary_and_passes_a_calibrated_one(tiny_run: Path, tmp_path: Path):
    repo = tmp_path / "repo"
    shutil.copytree(tiny_run / "model_repository", repo)
    (tmp_path / "tokens").write_text(f"{hash_token(TOKEN)} admin,score operator\n")
    log_dir, port, joined = tmp_path / "requestlog", free_port(), tmp_path / "joined" / "events.npz"
    joined.parent.mkdir()
    for v in (2, 3):
        (tmp_path / f"v{v}.toml").write_text(SPEC.format(version=v, port=port, min_labelled=MIN_LABELLED))
    catalog = load_catalog(tiny_run / "catalog.npz")
    args = ["--repository", str(repo), "--rollout-registry", str(tmp_path / "state"), "--auth-tokens",
            str(tmp_path / "tokens"), "--rollout-poll-s", "0.2", "--request-log", str(log_dir),
            "--request-log-rotate-s", "0.3", "--drain-delay-s", "0"]
    with ServerProcess(args) as srv:
        copy_version(repo, "vm", 1, 2, p_ctr_factor=2.0)  # exported while v1 serves: only a rollout loads them
        copy_version(repo, "vm", 1, 3)
        started = _cli(srv, "start", str(tmp_path / "v2.toml"))
        assert started.returncode == 0, started.stderr
        few = _simulate(srv, tmp_path / "sim0", seed=10, start_ms=None, n=150)
        # labels not joined yet and the monitor not up: skipped, said so, and the last step does not promote
        with ScoreLoop(srv, catalog, metadata=AUTH):
            status = _until(srv, 10, "unreadable")
        assert "phase progressing" in status and "skipped calibration" in status and "unreadable" in status, status

        _join(log_dir, [few.labels_path], joined)
        with Monitor(port, ["--joined", str(joined), "--request-log", str(log_dir)]):
            # the monitor answers, but fewer than min_labelled impressions per arm have joined: still skipped
            with ScoreLoop(srv, catalog, metadata=AUTH):
                status = _until(srv, 10, "waiting for delayed labels")
            assert "phase progressing" in status and f"need {MIN_LABELLED} each" in status, status
            first = _simulate(srv, tmp_path / "sim1", seed=11, start_ms=few.last_ms + 60_000)
            _join(log_dir, [few.labels_path, first.labels_path], joined)
            with ScoreLoop(srv, catalog, metadata=AUTH) as traffic:
                status = _until_done(srv, 20)
            assert traffic.failed == 0
            assert "phase rolled_back" in status, status
            history = _cli(srv, "history", "--model", "vm").stdout
            entry = [e for e in _audit(tmp_path) if e["to_state"] == "rolled_back"]
            assert len(entry) == 1 and "calibration canary/live" in entry[0]["reason"], history
            cal = entry[0]["metrics"]["calibration"]
            assert cal["status"] == "failed" and cal["value"] > 1.5
            assert entry[0]["metrics"]["psi"]["status"] == "passed"  # only calibration caught it
            assert entry[0]["metrics"]["p_ctr_ratio"]["status"] == "passed"
            psi = entry[0]["metrics"]["psi"]["value"]
            print(f"miscalibrated canary: calibration canary/live {cal['value']:.2f} (PSI {psi:.2f}) → rolled back")

            started = _cli(srv, "start", str(tmp_path / "v3.toml"))
            assert started.returncode == 0, started.stderr
            second = _simulate(srv, tmp_path / "sim2", seed=12, start_ms=first.last_ms + 60_000)
            _join(log_dir, [few.labels_path, first.labels_path, second.labels_path], joined)
            with ScoreLoop(srv, catalog, metadata=AUTH) as traffic:
                status = _until_done(srv, 20)
            assert traffic.failed == 0
            assert "phase promoted" in status, status
        promoted = [e for e in _audit(tmp_path) if e["version"] == 3 and e["to_state"] == "live"]
        assert len(promoted) == 1
        assert not any(e["version"] == 3 and e["to_state"] == "rolled_back" for e in _audit(tmp_path))
        cal = promoted[0]["metrics"]["calibration"]
        assert cal["status"] == "passed" and 0.67 <= cal["value"] <= 1.5
        print(f"calibrated canary: calibration canary/live {cal['value']:.2f} → promoted")


def _audit(d: Path) -> list[dict]:
    from serving.rollout.sqlite_registry import SqliteRegistry

    reg = SqliteRegistry(d / "state")
    try:
        return [{"version": e.version, "to_state": e.to_state.value, "reason": e.reason, "metrics": e.metrics}
                for e in reg.audit("vm")]
    finally:
        reg.close()
