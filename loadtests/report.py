"""Turns a locust run into figures: exact percentiles from the per-call dump, locust's CSV as a
fallback, a latency histogram + timeline PNG and a rich pass/fail table.

Locust rounds response times below 100 ms to whole milliseconds in its CSV percentiles, so budgets in
the sub-millisecond range are checked against the locustfile's per-call dump (``calls.npz``).
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from embedding_cache.latency import percentiles

NAN = float("nan")


@dataclass(frozen=True)
class LoadSummary:
    source: str  # "calls" (per-call dump) or "locust-csv"
    requests: int
    failures: int
    window_s: float
    rps: float
    candidates_per_s: float
    mean_candidates: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    server_p50_ms: float = NAN
    server_p99_ms: float = NAN

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else NAN

    def as_dict(self) -> dict:
        return {**asdict(self), "error_rate": self.error_rate}


def load_calls(path: str | Path) -> dict[str, np.ndarray] | None:
    path = Path(path)
    if not path.exists():
        return None
    with np.load(path) as data:
        calls = {k: data[k] for k in data.files}
    return calls if len(calls.get("client_ms", ())) else None


def summarize_calls(calls: dict[str, np.ndarray], start_s: float = 0.0, end_s: float = math.inf) -> LoadSummary | None:
    """Figures over calls that started in [start_s, end_s) (seconds after the test start)."""
    sel = (calls["t_s"] >= start_s) & (calls["t_s"] < end_s)
    if not sel.any():
        return None
    t, ms, ok = calls["t_s"][sel], calls["client_ms"][sel], calls["ok"][sel].astype(bool)
    server, cands = calls["server_ms"][sel], calls["candidates"][sel]
    # the window runs from the first call's start to the last call's end
    window = float(max(np.max(t + ms / 1e3) - np.min(t), 1e-3))
    p50, p95, p99 = percentiles(ms, (50, 95, 99)).values()
    s50, s99 = percentiles(server[ok & np.isfinite(server)], (50, 99)).values()  # NaN when none succeeded
    return LoadSummary("calls", int(len(ms)), int((~ok).sum()), window, float(ok.sum() / window),
                       float(cands[ok].sum() / window), float(cands.mean()), float(p50), float(p95), float(p99),
                       float(ms.max()), float(s50), float(s99))


def read_locust_stats(path: str | Path) -> dict[str, dict[str, str]]:
    """Rows of locust's ``*_stats.csv`` keyed by Name ("Score", "Aggregated")."""
    with open(path, newline="") as fh:
        return {row["Name"]: row for row in csv.DictReader(fh)}


def summarize_locust_csv(path: str | Path) -> LoadSummary | None:
    row = read_locust_stats(path).get("Aggregated")
    if not row or not int(row["Request Count"]):
        return None
    n, fails = int(row["Request Count"]), int(row["Failure Count"])
    rps = float(row["Requests/s"]) * (n - fails) / n
    mean_cands = float(row["Average Content Size"])  # the locustfile reports candidates as response_length
    return LoadSummary("locust-csv", n, fails, n / max(float(row["Requests/s"]), 1e-9), rps,
                       float(row["Requests/s"]) * mean_cands, mean_cands, float(row["50%"]), float(row["95%"]),
                       float(row["99%"]), float(row["Max Response Time"]))


def read_history(path: str | Path) -> dict[str, np.ndarray]:
    """Locust's ``*_stats_history.csv`` (Aggregated rows): time, users, req/s, p50/p99 (ms)."""
    cols = {"Timestamp": "t", "User Count": "users", "Requests/s": "rps", "50%": "p50", "99%": "p99"}
    out: dict[str, list[float]] = {v: [] for v in cols.values()}
    if Path(path).exists():
        with open(path, newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get("Name") != "Aggregated":
                    continue
                for src, dst in cols.items():
                    try:
                        out[dst].append(float(row[src]))
                    except (KeyError, ValueError):
                        out[dst].append(NAN)
    arr = {k: np.asarray(v) for k, v in out.items()}
    if len(arr["t"]):
        arr["t"] = arr["t"] - arr["t"][0]
    return arr


def plot_latency(calls: dict[str, np.ndarray] | None, history: dict[str, np.ndarray], path: str | Path,
                 title: str = "", budget_p99_ms: float | None = None) -> Path:
    """Left: histogram of client (and server) latency per call. Right: req/s and p99 over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    if calls is not None:
        ok = calls["ok"].astype(bool)
        client = calls["client_ms"][ok]
        hi = percentiles(client, (99.9,))["p99.9"] if len(client) else 1.0
        bins = np.linspace(0, max(hi, 1e-3) * 1.05, 80)
        ax1.hist(client, bins=bins, alpha=0.7, label="client (gRPC round trip)")
        server = calls["server_ms"][ok & np.isfinite(calls["server_ms"])]
        if len(server):
            ax1.hist(server, bins=bins, alpha=0.6, label="server (timing.total_us)")
        marks = percentiles(client, (50, 99))
        for q, style in ((50, ":"), (99, "--")):
            if len(client):
                ax1.axvline(marks[f"p{q}"], color="k", ls=style, lw=1, label=f"client p{q}")
    if budget_p99_ms is not None:
        ax1.axvline(budget_p99_ms, color="r", lw=1, label="p99 budget")
    ax1.set_xlabel("latency (ms)")
    ax1.set_ylabel("calls")
    ax1.legend(fontsize=8)
    ax1.set_title("latency per call (successful)")
    if len(history.get("t", ())):
        ax2.plot(history["t"], history["rps"], label="req/s")
        ax2.set_ylabel("requests/s")
        ax2.set_xlabel("seconds")
        ax3 = ax2.twinx()
        ax3.plot(history["t"], history["p99"], color="tab:red", label="p99 (ms, locust, rolling)")
        ax3.set_ylabel("p99 (ms)")
        ax2.legend(loc="upper left", fontsize=8)
        ax3.legend(loc="upper right", fontsize=8)
        ax2.set_title("throughput and p99 over time")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def checks_table(checks, title: str):
    from rich.table import Table

    table = Table(title=title)
    for col, justify in (("budget", "left"), ("measured", "right"), ("limit", "right"), ("result", "center")):
        table.add_column(col, justify=justify)
    for c in checks:
        fmt = (lambda v: f"{v:.4%}") if c.name == "error rate" else (lambda v: f"{v:,.3f}")
        table.add_row(c.name, fmt(c.value), f"{c.op} {fmt(c.limit)}",
                      "[green]PASS[/green]" if c.passed else "[red]FAIL[/red]")
    return table


def write_checks_csv(checks, summary: LoadSummary, path: str | Path) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["metric", "value", "op", "limit", "passed"])
        for c in checks:
            w.writerow([c.name, f"{c.value:.6g}", c.op, f"{c.limit:.6g}", int(c.passed)])
        for key, value in summary.as_dict().items():
            w.writerow([key, value, "", "", ""])
    return Path(path)
