"""loadtests.report: figures from the per-call dump and from locust's CSV, and the plot."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from loadtests.report import load_calls, plot_latency, read_history, summarize_calls, summarize_locust_csv


def _calls(n: int = 1000) -> dict[str, np.ndarray]:
    t = np.linspace(0, 10, n, endpoint=False)
    ok = np.ones(n, bool)
    ok[::100] = False
    return {"t_s": t, "client_ms": np.linspace(1, 10, n), "server_ms": np.where(ok, 0.5, np.nan),
            "candidates": np.full(n, 200), "ok": ok, "t0_s": np.array([0.0])}


def test_summary_from_calls_counts_only_successes_for_throughput() -> None:
    s = summarize_calls(_calls())
    assert s.requests == 1000 and s.failures == 10 and s.error_rate == pytest.approx(0.01)
    assert s.window_s == pytest.approx(10.0, abs=0.02)
    assert s.rps == pytest.approx(990 / s.window_s)
    assert s.candidates_per_s == pytest.approx(200 * s.rps)
    assert s.p50_ms == pytest.approx(5.5, abs=0.01) and s.p99_ms == pytest.approx(9.91, abs=0.01)
    assert s.server_p99_ms == pytest.approx(0.5)


def test_summary_window_selects_calls_by_start_time() -> None:
    s = summarize_calls(_calls(), start_s=5.0, end_s=6.0)
    assert s.requests == 100
    assert summarize_calls(_calls(), start_s=50.0) is None


def test_calls_file_round_trip(tmp_path: Path) -> None:
    np.savez(tmp_path / "calls.npz", **_calls())
    assert load_calls(tmp_path / "calls.npz")["client_ms"].shape == (1000,)
    assert load_calls(tmp_path / "missing.npz") is None


def _write_locust_csv(path: Path) -> None:
    header = ["Type", "Name", "Request Count", "Failure Count", "Median Response Time", "Average Response Time",
              "Min Response Time", "Max Response Time", "Average Content Size", "Requests/s", "Failures/s",
              "50%", "66%", "75%", "80%", "90%", "95%", "98%", "99%", "99.9%", "99.99%", "100%"]
    rows = [["grpc", "Score", "500", "5", "3", "3.2", "1", "40", "180", "50.0", "0.5", "3", "3", "4", "4", "5", "7",
             "9", "12", "30", "40", "40"],
            ["", "Aggregated", "500", "5", "3", "3.2", "1", "40", "180", "50.0", "0.5", "3", "3", "4", "4", "5", "7",
             "9", "12", "30", "40", "40"]]
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def test_summary_from_locust_csv(tmp_path: Path) -> None:
    _write_locust_csv(tmp_path / "x_stats.csv")
    s = summarize_locust_csv(tmp_path / "x_stats.csv")
    assert s.source == "locust-csv" and s.requests == 500 and s.failures == 5
    assert s.p99_ms == 12 and s.p95_ms == 7 and s.mean_candidates == 180
    assert s.rps == pytest.approx(49.5) and s.candidates_per_s == pytest.approx(50 * 180)


def test_plot_writes_a_png_without_history(tmp_path: Path) -> None:
    path = plot_latency(_calls(), read_history(tmp_path / "absent.csv"), tmp_path / "lat.png", budget_p99_ms=8)
    assert path.read_bytes()[:4] == b"\x89PNG"
