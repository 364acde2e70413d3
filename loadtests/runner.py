"""`adrank loadtest`: locust headless in a child process against a running ranking server, checked
against latency budgets.

    adrank loadtest --target 127.0.0.1:50051 --users 8 --spawn-rate 8 --duration 30 \
        --budget loadtests/budgets.toml --catalog runs/demo/catalog.npz --out runs/loadtest

Writes into --out: ``locust_stats.csv`` / ``locust_stats_history.csv`` / ``locust_failures.csv`` (locust's),
``report.html`` (locust's HTML report), ``calls.npz`` (every call), ``latency.png``, ``summary.csv`` and
``summary.json``. Exit codes: 0 every budget met, 1 a budget missed, 2 usage error, 3 locust failed.

``--find-capacity`` steps users 1, 2, 4, … up to --max-users (--step-duration s each, within --duration),
reports the highest throughput whose p99 stays within the budget, then runs at half that rate and
reports the latency there (the operating point the targets name).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from loadtests.budgets import Budget, BudgetError
from loadtests.report import (
    LoadSummary,
    checks_table,
    load_calls,
    plot_latency,
    read_history,
    summarize_calls,
    summarize_locust_csv,
    write_checks_csv,
)
from loadtests.workload import CandidateSpec

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
ROOT = LOCUSTFILE.parents[1]
DEFAULT_BUDGET = Path(__file__).with_name("budgets.toml")
EXIT_OK, EXIT_BUDGET, EXIT_USAGE, EXIT_LOCUST = 0, 1, 2, 3


class UsageError(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adrank loadtest", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", default="127.0.0.1:50051", help="HOST:PORT of the ranking server")
    p.add_argument("--users", type=int, default=8, help="concurrent users (closed loop unless --rate)")
    p.add_argument("--spawn-rate", type=float, default=None, help="users started per second (default: all at once)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load (the whole ramp with --find-capacity)")
    p.add_argument("--budget", default=str(DEFAULT_BUDGET), help="TOML with a [budget] table")
    p.add_argument("--catalog", default="runs/demo/catalog.npz", help="catalog.npz written beside the model")
    p.add_argument("--out", default="runs/loadtest", help="folder for CSV, HTML, PNG and JSON")
    p.add_argument("--candidates", default="fixed:200",
                   help="fixed:N | uniform:MIN:MAX | lognormal:MEDIAN:SIGMA:MIN:MAX")
    p.add_argument("--wire", choices=("rows", "columns"), default="rows",
                   help="rows: Score; columns: ScoreColumns with the same candidates")
    p.add_argument("--rate", type=float, default=0.0, help="total requests/s (open-ish loop); 0 = as fast as users go")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds at the start left out of the figures")
    p.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of user popularity")
    p.add_argument("--find-capacity", action="store_true", help="step users up and report the capacity")
    p.add_argument("--max-users", type=int, default=32, help="--find-capacity: the last step")
    p.add_argument("--step-duration", type=float, default=5.0, help="--find-capacity: seconds per step")
    return p


@dataclass(frozen=True)
class LocustRun:
    out: Path
    summary: LoadSummary | None
    calls: dict | None
    returncode: int


def run_locust(a: argparse.Namespace, out: Path, *, users: int, duration_s: float, rate: float = 0.0,
               steps: list[int] | None = None, step_s: float = 0.0, tag: str = "") -> LocustRun:
    """One headless locust process; figures from its per-call dump (falls back to its CSV)."""
    prefix = out / f"locust{tag}"
    calls_path = out / f"calls{tag}.npz"
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", a.target,
           "--csv", str(prefix), "--csv-full-history", "--html", str(out / f"report{tag}.html"), "--only-summary",
           "--loglevel", "WARNING", "--exit-code-on-error", "0", "--stop-timeout", "2",
           "--catalog", str(a.catalog), "--candidates", str(a.candidates), "--zipf", str(a.zipf),
           "--latency-out", str(calls_path), "--wire", getattr(a, "wire", "rows")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("ADRANK_LT_STEPS", None)
    if steps:
        env["ADRANK_LT_STEPS"] = f"{','.join(map(str, steps))}@{step_s:g}"
    else:
        spawn = a.spawn_rate or users
        cmd += ["-u", str(users), "-r", f"{spawn:g}", "-t", f"{max(1, math.ceil(duration_s))}s"]
        if rate > 0:
            cmd += ["--user-rate", f"{rate / users:g}"]
    with open(out / f"locust{tag}.log", "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                              timeout=duration_s + 90, check=False)
    calls = load_calls(calls_path)
    summary = None
    if calls is not None:
        warm = a.warmup if duration_s > 2 * a.warmup else 0.0
        summary = summarize_calls(calls, start_s=warm)
    elif Path(f"{prefix}_stats.csv").exists():
        summary = summarize_locust_csv(f"{prefix}_stats.csv")
    return LocustRun(out, summary, calls, proc.returncode)


def _fmt(s: LoadSummary) -> str:
    return (f"{s.requests:,} calls, {s.rps:,.1f} req/s, {s.candidates_per_s:,.0f} candidates/s, "
            f"p50 {s.p50_ms:.2f} / p95 {s.p95_ms:.2f} / p99 {s.p99_ms:.2f} ms (server p50 {s.server_p50_ms:.2f} / "
            f"p99 {s.server_p99_ms:.2f} ms), errors {s.failures}")


def run_fixed(a: argparse.Namespace, budget: Budget, out: Path, console) -> int:
    console.print(f"locust: {a.users} users → {a.target} for {a.duration:g} s, candidates {a.candidates}"
                  + (f", {a.rate:g} req/s" if a.rate else ""))
    run = run_locust(a, out, users=a.users, duration_s=a.duration, rate=a.rate)
    if run.summary is None:
        console.print(f"[red]locust produced no calls (exit {run.returncode}); see {out / 'locust.log'}[/red]")
        return EXIT_LOCUST
    s = run.summary
    checks = budget.check(s)
    plot_latency(run.calls, read_history(out / "locust_stats_history.csv"), out / "latency.png",
                 title=f"{a.users} users, {a.candidates} candidates → {a.target}", budget_p99_ms=budget.p99_ms)
    write_checks_csv(checks, s, out / "summary.csv")
    passed = all(c.passed for c in checks)
    (out / "summary.json").write_text(json.dumps({
        "target": a.target, "users": a.users, "duration_s": a.duration, "candidates": str(a.candidates),
        "rate": a.rate, "summary": s.as_dict(), "passed": passed,
        "checks": [{"name": c.name, "value": c.value, "op": c.op, "limit": c.limit, "passed": c.passed}
                   for c in checks],
    }, indent=2))
    console.print(_fmt(s))
    console.print(checks_table(checks, f"budget {a.budget}"))
    console.print(f"{'[green]PASS' if passed else '[red]FAIL'}[/]: files in {out}")
    return EXIT_OK if passed else EXIT_BUDGET


def capacity_steps(max_users: int, step_s: float, duration_s: float) -> list[int]:
    """1, 2, 4, … max_users (max_users always last), truncated so the ramp fits in duration_s."""
    steps, u = [], 1
    while u < max_users:
        steps.append(u)
        u *= 2
    steps.append(max_users)
    fit = max(1, int(duration_s // step_s))
    return steps[:fit] if len(steps) > fit else steps


def run_capacity(a: argparse.Namespace, budget: Budget, out: Path, console) -> int:
    if budget.p99_ms is None:
        raise UsageError("--find-capacity needs p99_ms in the budget")
    steps = capacity_steps(a.max_users, a.step_duration, a.duration)
    console.print(f"capacity ramp: users {steps}, {a.step_duration:g} s each → {a.target}, candidates {a.candidates}")
    run = run_locust(a, out, users=max(steps), duration_s=len(steps) * a.step_duration, steps=steps,
                     step_s=a.step_duration, tag="_ramp")
    if run.calls is None:
        console.print(f"[red]locust produced no calls (exit {run.returncode}); see {out / 'locust_ramp.log'}[/red]")
        return EXIT_LOCUST
    from rich.table import Table

    table = Table(title=f"capacity ramp (p99 budget {budget.p99_ms:g} ms)")
    for col in ("users", "req/s", "candidates/s", "p50 ms", "p99 ms", "server p99 ms", "errors", "within budget"):
        table.add_column(col, justify="right")
    rows, best = [], None
    settle = min(1.0, a.step_duration / 4)  # spawned users connect during the first moments of a step
    for i, users in enumerate(steps):
        s = summarize_calls(run.calls, i * a.step_duration + settle, (i + 1) * a.step_duration)
        if s is None:
            continue
        ok = s.p99_ms <= budget.p99_ms and (budget.max_error_rate is None or s.error_rate <= budget.max_error_rate)
        rows.append({"users": users, "ok": ok, **s.as_dict()})
        table.add_row(str(users), f"{s.rps:,.1f}", f"{s.candidates_per_s:,.0f}", f"{s.p50_ms:.2f}", f"{s.p99_ms:.2f}",
                      f"{s.server_p99_ms:.2f}", str(s.failures), "[green]yes[/]" if ok else "[red]no[/]")
        if ok and (best is None or s.rps > best[1].rps):
            best = (users, s)
    console.print(table)
    result: dict = {"target": a.target, "candidates": str(a.candidates), "p99_budget_ms": budget.p99_ms,
                    "steps": rows, "capacity": None, "half_capacity": None}
    if best is not None:
        users, s = best
        result["capacity"] = {"users": users, "rps": s.rps, "candidates_per_s": s.candidates_per_s, "p99_ms": s.p99_ms}
        console.print(f"capacity: {s.rps:,.1f} req/s = {s.candidates_per_s:,.0f} candidates/s at {users} users "
                      f"(p99 {s.p99_ms:.2f} ms ≤ {budget.p99_ms:g} ms)")
        half = s.rps / 2
        dur = max(2 * a.step_duration, 4.0)
        hr = run_locust(a, out, users=users, duration_s=dur, rate=half, tag="_half")
        if hr.summary is not None:
            h = hr.summary
            result["half_capacity"] = {"target_rps": half, **h.as_dict()}
            console.print(f"at half capacity ({half:,.1f} req/s offered): {_fmt(h)}")
    else:
        console.print(f"[red]no step kept p99 within {budget.p99_ms:g} ms[/red]")
    plot_latency(run.calls, read_history(out / "locust_ramp_stats_history.csv"), out / "latency.png",
                 title=f"capacity ramp {steps} users, {a.candidates}", budget_p99_ms=budget.p99_ms)
    (out / "capacity.json").write_text(json.dumps(result, indent=2))
    console.print(f"files in {out}")
    return EXIT_OK if best is not None else EXIT_BUDGET


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    console = Console()
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # `adrank loadtest -- --target …`: argparse.REMAINDER keeps the separator
        argv = argv[1:]
    try:
        a = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 2 on errors, 0 on --help
        return int(exc.code or 0)
    try:
        if ":" not in a.target:
            raise UsageError(f"--target: expected HOST:PORT, got {a.target!r}")
        for name in ("users", "max_users"):
            if getattr(a, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')}: must be >= 1")
        if a.duration <= 0 or a.step_duration <= 0:
            raise UsageError("--duration and --step-duration must be > 0")
        a.candidates = CandidateSpec.parse(a.candidates)
        if not Path(a.catalog).is_file():
            raise UsageError(f"--catalog: {a.catalog} does not exist (written by `adrank train` beside the model)")
        budget = Budget.load(a.budget)
    except (UsageError, BudgetError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return EXIT_USAGE
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        rc = run_capacity(a, budget, out, console) if a.find_capacity else run_fixed(a, budget, out, console)
    except UsageError as exc:
        console.print(f"[red]error:[/red] {exc}")
        return EXIT_USAGE
    except subprocess.TimeoutExpired:
        console.print("[red]locust did not finish in time[/red]")
        return EXIT_LOCUST
    console.print(f"done in {time.perf_counter() - t0:.1f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
