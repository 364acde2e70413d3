"""`adrank loadtest` end to end: a real server child process, locust in its own process, real gRPC."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from serving.process import ServerProcess

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(tiny_run: Path):
    with ServerProcess(["--repository", str(tiny_run / "model_repository")]) as srv:
        yield srv


def _loadtest(server: ServerProcess, catalog: Path, budget: Path, out: Path,
              duration: int) -> subprocess.CompletedProcess:
    # "--" keeps argparse.REMAINDER in adrank.cli from reading loadtest's flags as its own
    cmd = [sys.executable, "-m", "adrank", "loadtest", "--", "--target", server.target, "--users", "2",
           "--spawn-rate", "2", "--duration", str(duration), "--warmup", "0.5", "--budget", str(budget),
           "--catalog", str(catalog), "--out", str(out), "--candidates", "uniform:50:200"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=duration + 60, check=False)


def test_loose_budget_passes_and_writes_reports(server: ServerProcess, tiny_run: Path, tmp_path: Path) -> None:
    budget = tmp_path / "loose.toml"
    budget.write_text("[budget]\np50_ms = 2000\np99_ms = 5000\nmax_error_rate = 0.0\nmin_rps = 1\n")
    out = tmp_path / "out"
    proc = _loadtest(server, tiny_run / "catalog.npz", budget, out, duration=5)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("locust_stats.csv", "locust_stats_history.csv", "report.html", "latency.png", "summary.csv",
                 "summary.json", "calls.npz"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"] and summary["summary"]["failures"] == 0
    assert summary["summary"]["requests"] > 0
    assert 50 <= summary["summary"]["mean_candidates"] <= 200
    assert summary["summary"]["server_p99_ms"] > 0  # the server's own timing came back through the response


def test_impossible_budget_exits_1(server: ServerProcess, tiny_run: Path, tmp_path: Path) -> None:
    budget = tmp_path / "impossible.toml"
    budget.write_text("[budget]\np99_ms = 0.001\n")
    proc = _loadtest(server, tiny_run / "catalog.npz", budget, tmp_path / "out", duration=3)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FAIL" in proc.stdout
