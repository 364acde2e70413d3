"""Latency budgets (TOML) and the pass/fail check of a load-test summary against them.

Usage::

    budget = Budget.load("loadtests/budgets.toml")
    checks = budget.check(summary)          # summary: LoadSummary
    passed = all(c.passed for c in checks)
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path


class BudgetError(ValueError):
    """The budget file is missing, unreadable or names an unknown key."""


@dataclass(frozen=True, kw_only=True)
class Budget:
    """Upper bounds (``*_ms``, ``max_error_rate``) and lower bounds (``min_*``); None = not checked."""

    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_error_rate: float | None = None
    min_rps: float | None = None
    min_candidates_per_s: float | None = None
    server_p99_ms: float | None = None

    @classmethod
    def load(cls, path: str | Path) -> Budget:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise BudgetError(f"--budget {path}: {exc}") from None
        table = data.get("budget", data)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise BudgetError(f"--budget {path}: unknown keys {unknown}; known {sorted(known)}")
        for key, value in table.items():
            if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
                raise BudgetError(f"--budget {path}: {key} must be a number >= 0, got {value!r}")
        return cls(**{k: float(v) for k, v in table.items()})

    def check(self, summary) -> list[Check]:
        """One Check per budget that is set, in a fixed order."""
        rows = [
            ("p50 latency (ms)", summary.p50_ms, self.p50_ms, "<="),
            ("p95 latency (ms)", summary.p95_ms, self.p95_ms, "<="),
            ("p99 latency (ms)", summary.p99_ms, self.p99_ms, "<="),
            ("server p99 (ms)", summary.server_p99_ms, self.server_p99_ms, "<="),
            ("error rate", summary.error_rate, self.max_error_rate, "<="),
            ("throughput (req/s)", summary.rps, self.min_rps, ">="),
            ("candidates/s", summary.candidates_per_s, self.min_candidates_per_s, ">="),
        ]
        return [Check(name, value, limit, op) for name, value, limit, op in rows if limit is not None]


@dataclass(frozen=True)
class Check:
    name: str
    value: float
    limit: float
    op: str  # "<=" or ">="

    @property
    def passed(self) -> bool:
        if self.value is None or math.isnan(self.value):
            return False
        return self.value <= self.limit if self.op == "<=" else self.value >= self.limit
