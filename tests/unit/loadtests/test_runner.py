"""loadtests.runner: usage errors (exit 2) before any locust process starts, capacity steps, and the
rule that importing the package never imports locust (it would hang gRPC in the same process)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loadtests import runner

ROOT = Path(__file__).resolve().parents[3]


def test_importing_loadtests_does_not_import_locust_or_gevent() -> None:
    code = ("import sys, loadtests, loadtests.runner, loadtests.bench, loadtests.bench_serve, loadtests.workload; "
            "bad = [m for m in ('locust', 'gevent') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("users,step,duration,expected", [
    (32, 5, 60, [1, 2, 4, 8, 16, 32]), (12, 5, 60, [1, 2, 4, 8, 12]), (32, 5, 15, [1, 2, 4]), (1, 5, 3, [1])])
def test_capacity_steps_double_and_fit_the_duration(users: int, step: float, duration: float,
                                                    expected: list[int]) -> None:
    assert runner.capacity_steps(users, step, duration) == expected


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.npz"
    path.write_bytes(b"not read before the usage checks pass")
    return path


@pytest.mark.parametrize("extra", [["--target", "nohostport"], ["--users", "0"], ["--candidates", "uniform:9:3"],
                                   ["--budget", "/nonexistent/budget.toml"], ["--catalog", "/nonexistent/catalog.npz"],
                                   ["--duration", "0"], ["--bogus-flag"]])
def test_usage_errors_exit_2(extra: list[str], catalog: Path, tmp_path: Path) -> None:
    argv = ["--target", "127.0.0.1:1", "--catalog", str(catalog), "--out", str(tmp_path / "out"), *extra]
    assert runner.main(argv) == 2
    assert not (tmp_path / "out").exists()


def test_leading_separator_is_accepted(catalog: Path, capsys: pytest.CaptureFixture) -> None:
    # `adrank loadtest -- --target …` hands the separator through; parsing must get past it to the target check
    assert runner.main(["--", "--target", "bad", "--catalog", str(catalog)]) == 2
    assert "expected HOST:PORT" in capsys.readouterr().out


def test_capacity_needs_a_p99_budget(catalog: Path, tmp_path: Path) -> None:
    budget = tmp_path / "b.toml"
    budget.write_text("[budget]\nmin_rps = 1\n")
    argv = ["--target", "127.0.0.1:1", "--catalog", str(catalog), "--out", str(tmp_path / "out"), "--budget",
            str(budget), "--find-capacity"]
    assert runner.main(argv) == 2
