"""loadtests.budgets: the TOML budget file and the pass/fail checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.budgets import Budget, BudgetError
from loadtests.report import LoadSummary

ROOT = Path(__file__).resolve().parents[3]


def _summary(**kw) -> LoadSummary:
    base = dict(source="calls", requests=1000, failures=1, window_s=10.0, rps=100.0, candidates_per_s=20_000.0,
                mean_candidates=200.0, p50_ms=2.0, p95_ms=4.0, p99_ms=6.0, max_ms=9.0, server_p50_ms=1.0,
                server_p99_ms=3.0)
    return LoadSummary(**{**base, **kw})


def test_shipped_budget_file_loads() -> None:
    budget = Budget.load(ROOT / "loadtests" / "budgets.toml")
    assert budget.p99_ms is not None and budget.max_error_rate is not None and budget.min_rps is not None


def test_checks_pass_and_fail_per_key(tmp_path: Path) -> None:
    path = tmp_path / "b.toml"
    path.write_text("[budget]\np50_ms = 3\np99_ms = 5\nmax_error_rate = 0.01\nmin_rps = 50\n"
                    "min_candidates_per_s = 30000\n")
    checks = {c.name: c.passed for c in Budget.load(path).check(_summary())}
    assert checks == {"p50 latency (ms)": True, "p99 latency (ms)": False, "error rate": True,
                      "throughput (req/s)": True, "candidates/s": False}


def test_unset_keys_are_not_checked_and_nan_fails() -> None:
    checks = Budget(server_p99_ms=10).check(_summary(server_p99_ms=float("nan")))
    assert [c.name for c in checks] == ["server p99 (ms)"] and not checks[0].passed


def test_top_level_keys_work_without_a_table(tmp_path: Path) -> None:
    path = tmp_path / "b.toml"
    path.write_text("p99_ms = 1.5\n")
    assert Budget.load(path).p99_ms == 1.5


@pytest.mark.parametrize("text,match", [("[budget]\np99 = 3\n", "unknown keys"), ("[budget]\np99_ms = -1\n", ">= 0"),
                                        ("[budget]\np99_ms = 'fast'\n", "number"), ("[budget\n", "b.toml")])
def test_bad_budget_files_are_refused(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "b.toml"
    path.write_text(text)
    with pytest.raises(BudgetError, match=match):
        Budget.load(path)


def test_missing_budget_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BudgetError, match="nope.toml"):
        Budget.load(tmp_path / "nope.toml")
