"""Calibration of served scores, per model version and rollout arm, from a joined log.

Why: a ranking model's expected values are bid × pCTR × pCVR, so a model whose pCTR runs 20% high
overbids by 20% even when its ranking (AUC) is fine. Once the labels have joined (`adrank logs join`),
each shown impression has the pCTR and pCVR it was served with (in the request log) and what happened;
calibration is mean predicted / observed, per (model, version, arm), so a canary arm can be compared
with the live one. pCVR is P(conversion | click), so it is calibrated over clicked impressions only.

The joined EventLog does not carry request ids, so rows are matched back to their logged candidate by
(request time, user, ad); a key that occurs in two logged requests is counted as ambiguous and left out.

Live transfer ratio: requests in the server's transfer sample were also scored with FM history
masked out (`p_ctr_no_history`). Over their joined impressions, the online NE gain from FM history is
(NE without history − NE served) / NE without history, on the same impressions and clicks; the
offline gain is the same figure on the model's test slice (`test` and `test_no_history` metrics in
the version's manifest, when `--repository` is given), and the live transfer ratio is online / offline:
the share of what FM history was worth offline that holds on live traffic.

Prometheus: `--serve-metrics PORT` keeps the process running and exports every figure as a gauge
(`adrank_monitor_*`, labels model, version, arm), recomputed from the files at most every
`--refresh-s` seconds when scraped. The monitor, not the server, exports them because labels arrive
long after serving and join over every replica's log: a ratio computed per replica cannot be summed.

Usage::

    rows = calibration(EventLog.load("runs/sim/joined.npz"), "runs/requestlog")
    adrank monitor --joined runs/sim/joined.npz --request-log runs/requestlog [--repository R]
    adrank monitor --joined runs/sim/joined.npz --request-log runs/requestlog --serve-metrics 9101
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from models.data.requestlog import read_request_log, request_log_files
from models.data.schema import EventLog
from models.metrics import normalized_entropy


@dataclass(frozen=True)
class Calibration:
    """One (model, version, arm): impressions and clicks joined, mean predicted and observed rates."""

    model_name: str
    model_version: int
    rollout_arm: str
    impressions: int
    clicks: int
    conversions: int
    mean_p_ctr: float
    ctr: float
    mean_p_cvr_of_clicks: float
    cvr_of_clicks: float

    @property
    def ctr_calibration(self) -> float:
        """mean pCTR / observed CTR: 1 is calibrated, above 1 over-predicts (NaN without clicks)."""
        return self.mean_p_ctr / self.ctr if self.ctr > 0 else float("nan")

    @property
    def cvr_calibration(self) -> float:
        return self.mean_p_cvr_of_clicks / self.cvr_of_clicks if self.cvr_of_clicks > 0 else float("nan")


@dataclass(frozen=True)
class MatchReport:
    rows: int
    matched: int
    unmatched: int
    ambiguous: int


def _served_scores(request_log: str | Path) -> tuple[dict[tuple[int, int, int], int], dict[str, np.ndarray], int]:
    """(key → flat candidate index, flat per-candidate columns, number of ambiguous keys)."""
    table = read_request_log(request_log, columns=["request_time_ms", "user_id", "ad_id", "p_ctr", "p_cvr",
                                                   "model_name", "model_version", "rollout_arm", "p_ctr_no_history"])
    lengths = pc.list_value_length(table.column("ad_id")).to_numpy(zero_copy_only=False).astype(np.int64)
    parent = np.repeat(np.arange(table.num_rows), lengths)
    flat = {name: pc.list_flatten(table.column(name)).to_numpy(zero_copy_only=False)
            for name in ("ad_id", "p_ctr", "p_cvr")}
    # no-history scores: a list per candidate for requests in the transfer sample, empty lists otherwise
    sampled = pc.list_value_length(table.column("p_ctr_no_history")).to_numpy(zero_copy_only=False) > 0
    flat["p_ctr_no_history"] = np.full(int(lengths.sum()), np.nan, np.float32)
    flat["p_ctr_no_history"][np.repeat(sampled, lengths)] = pc.list_flatten(
        table.column("p_ctr_no_history")).to_numpy(zero_copy_only=False)
    for name in ("request_time_ms", "user_id", "model_version"):
        flat[name] = table.column(name).to_numpy()[parent]
    for name in ("model_name", "rollout_arm"):
        flat[name] = np.asarray(table.column(name).to_pylist(), dtype=object)[parent]
    index: dict[tuple[int, int, int], int] = {}
    ambiguous: set[tuple[int, int, int]] = set()
    for i, key in enumerate(zip(flat["request_time_ms"].tolist(), flat["user_id"].tolist(), flat["ad_id"].tolist(),
                                strict=True)):
        if key in index:
            ambiguous.add(key)
        index[key] = i
    for key in ambiguous:
        del index[key]
    return index, flat, len(ambiguous)


@dataclass(frozen=True)
class _Matched:
    """Joined rows matched to their logged candidate: `rows` index the flat candidate columns."""

    flat: dict[str, np.ndarray]
    rows: np.ndarray
    click: np.ndarray
    conversion: np.ndarray
    report: MatchReport

    def groups(self) -> Iterator[tuple[tuple[str, int, str], np.ndarray]]:
        """((model, version, arm), boolean mask over `rows`) for each group, sorted."""
        flat, rows = self.flat, self.rows
        keys = [(flat["model_name"][i], int(flat["model_version"][i]), flat["rollout_arm"][i]) for i in rows]
        for key in sorted(set(keys)):
            yield key, np.array([k == key for k in keys], dtype=bool)


def _match(joined: EventLog, request_log: str | Path) -> _Matched:
    index, flat, ambiguous = _served_scores(request_log)
    keys = zip(joined["ts_ms"].tolist(), joined["user_id"].tolist(), joined["ad_id"].tolist(), strict=True)
    at = np.array([index.get(k, -1) for k in keys], dtype=np.int64)
    ok = at >= 0
    report = MatchReport(rows=len(at), matched=int(ok.sum()), unmatched=int((~ok).sum()), ambiguous=ambiguous)
    return _Matched(flat, at[ok], joined["click"][ok].astype(np.float64),
                    joined["conversion"][ok].astype(np.float64), report)


def calibration(joined: EventLog, request_log: str | Path) -> tuple[list[Calibration], MatchReport]:
    """Calibration per (model, version, arm) of the joined impressions, with how rows were matched."""
    return _calibration(_match(joined, request_log))


def _calibration(m: _Matched) -> tuple[list[Calibration], MatchReport]:
    flat, rows, click, conv = m.flat, m.rows, m.click, m.conversion
    out = []
    for (name, version, arm), g in m.groups():
        p_ctr = flat["p_ctr"][rows[g]].astype(np.float64)
        p_cvr = flat["p_cvr"][rows[g]].astype(np.float64)
        clicked = click[g] > 0
        n_clicks = int(clicked.sum())
        out.append(Calibration(
            model_name=name, model_version=version, rollout_arm=arm, impressions=int(g.sum()), clicks=n_clicks,
            conversions=int(conv[g].sum()), mean_p_ctr=float(p_ctr.mean()), ctr=float(click[g].mean()),
            mean_p_cvr_of_clicks=float(p_cvr[clicked].mean()) if n_clicks else float("nan"),
            cvr_of_clicks=float(conv[g][clicked].mean()) if n_clicks else float("nan")))
    return out, m.report


@dataclass(frozen=True)
class Transfer:
    """One (model, version, arm): joined impressions of transfer-sampled requests, NE with and without FM
    history on them, and the offline gain of the version (NaN when unknown)."""

    model_name: str
    model_version: int
    rollout_arm: str
    impressions: int
    clicks: int
    ne_served: float
    ne_no_history: float
    offline_ne_gain: float

    @property
    def online_ne_gain(self) -> float:
        """(NE without history − NE served) / NE without history: the relative NE gain from FM history."""
        return ne_gain(self.ne_served, self.ne_no_history)

    @property
    def live_transfer_ratio(self) -> float:
        """online gain / offline gain: the share of FM history's offline gain that holds on live traffic."""
        off = self.offline_ne_gain
        return self.online_ne_gain / off if off > 0 and np.isfinite(off) else float("nan")


def ne_gain(ne_with: float, ne_without: float) -> float:
    return (ne_without - ne_with) / ne_without if ne_without > 0 else float("nan")


_NAME = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def offline_ne_gain(repository: str | Path | None, model_name: str, version: int) -> float:
    """The CTR NE gain from FM history on the version's test slice, from its manifest's `test` and
    `test_no_history` metrics (written by training); NaN without a repository or those metrics."""
    if repository is None or not _NAME.fullmatch(model_name) or model_name in (".", ".."):
        return float("nan")
    path = Path(repository) / model_name / str(int(version)) / "manifest.json"
    try:
        metrics = json.loads(path.read_text()).get("metrics", {})
        return ne_gain(float(metrics["test"]["ctr_ne"]), float(metrics["test_no_history"]["ctr_ne"]))
    except (OSError, ValueError, KeyError, TypeError):
        return float("nan")


def transfer(joined: EventLog, request_log: str | Path, repository: str | Path | None = None) -> list[Transfer]:
    """The live transfer ratio per (model, version, arm), over joined impressions with no-history scores."""
    return _transfer(_match(joined, request_log), repository)


def _transfer(m: _Matched, repository: str | Path | None) -> list[Transfer]:
    out = []
    masked = m.flat["p_ctr_no_history"][m.rows]
    sampled = ~np.isnan(masked)
    for (name, version, arm), g in m.groups():
        g = g & sampled
        if not g.any():
            continue
        click = m.click[g]
        served = m.flat["p_ctr"][m.rows[g]].astype(np.float64)
        out.append(Transfer(name, version, arm, int(g.sum()), int(click.sum()), normalized_entropy(click, served),
                            normalized_entropy(click, masked[g].astype(np.float64)),
                            offline_ne_gain(repository, name, version)))
    return out


class MonitorCollector:
    """Exports calibration and the live transfer ratio as `adrank_monitor_*` gauges, recomputed from the
    joined log and the request log on a scrape at most every `refresh_s` (Prometheus scrapes are cheap;
    a recomputation reads every log file)."""

    def __init__(self, joined: str | Path, request_log: str | Path, repository: str | Path | None = None, *,
                 refresh_s: float = 30.0) -> None:
        self.joined, self.request_log, self.repository, self.refresh_s = joined, request_log, repository, refresh_s
        self._lock = threading.Lock()
        self._at = -float("inf")
        self._families: list = []

    def _compute(self) -> list:
        from prometheus_client.core import GaugeMetricFamily

        m = _match(EventLog.load(self.joined), self.request_log)
        rows, _ = _calibration(m)
        labels = ["model", "version", "arm"]

        def family(name: str, doc: str, extra: list[str] | None = None) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"adrank_monitor_{name}", doc, labels=labels + (extra or []))

        out = {k: family(k, doc) for k, doc in (
            ("impressions", "Joined impressions matched to their logged scores"),
            ("clicks", "Clicks joined within the click window"),
            ("conversions", "Conversions joined within the conversion window"),
            ("mean_p_ctr", "Mean served pCTR over joined impressions"),
            ("ctr", "Observed CTR over joined impressions"),
            ("ctr_calibration", "Mean served pCTR / observed CTR (1 is calibrated)"),
            ("mean_p_cvr_of_clicks", "Mean served pCVR over clicked impressions"),
            ("cvr_of_clicks", "Observed CVR over clicked impressions"),
            ("cvr_calibration", "Mean served pCVR / observed CVR over clicked impressions"),
            ("transfer_impressions", "Joined impressions of requests in the transfer sample"),
            ("online_ne_gain", "Relative CTR NE gain from FM history on the transfer sample's joined impressions"),
            ("offline_ne_gain", "Relative CTR NE gain from FM history on the version's offline test slice"),
            ("live_transfer_ratio", "Online NE gain / offline NE gain from FM history"))}
        ne = family("ne", "CTR normalized entropy on the transfer sample's joined impressions, served "
                    "(history=served) and with FM history masked out (history=masked)", ["history"])
        for r in rows:
            key = [r.model_name, str(r.model_version), r.rollout_arm]
            for k in ("impressions", "clicks", "conversions", "mean_p_ctr", "ctr", "ctr_calibration",
                      "mean_p_cvr_of_clicks", "cvr_of_clicks", "cvr_calibration"):
                out[k].add_metric(key, float(getattr(r, k)))
        for t in _transfer(m, self.repository):
            key = [t.model_name, str(t.model_version), t.rollout_arm]
            out["transfer_impressions"].add_metric(key, t.impressions)
            ne.add_metric(key + ["served"], t.ne_served)
            ne.add_metric(key + ["masked"], t.ne_no_history)
            for k in ("online_ne_gain", "offline_ne_gain", "live_transfer_ratio"):
                out[k].add_metric(key, float(getattr(t, k)))
        match = GaugeMetricFamily("adrank_monitor_joined_rows", "Joined rows by how they matched the request log",
                                  labels=["match"])
        match.add_metric(["matched"], m.report.matched)
        match.add_metric(["unmatched"], m.report.unmatched)
        match.add_metric(["ambiguous"], m.report.ambiguous)
        files = GaugeMetricFamily("adrank_monitor_request_log_files", "Complete request log files read")
        files.add_metric([], len(request_log_files(self.request_log)))
        updated = GaugeMetricFamily("adrank_monitor_updated_timestamp_seconds", "When the figures were recomputed")
        updated.add_metric([], time.time())
        return [*out.values(), ne, match, files, updated]

    def collect(self) -> Iterator:
        with self._lock:
            if time.monotonic() - self._at >= self.refresh_s:
                self._families = self._compute()
                self._at = time.monotonic()
            yield from self._families


def serve_metrics(collector: MonitorCollector, port: int, host: str = "127.0.0.1") -> None:
    """Exports `collector` on http://host:port/metrics until SIGTERM or SIGINT."""
    import signal

    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(collector)  # computes once now: a bad file fails at start, not at the first scrape
    server, _ = start_http_server(port, addr=host, registry=registry)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"monitor metrics on http://{host}:{server.server_port}/metrics", flush=True)
    stop.wait()
    server.shutdown()


def main(argv: list[str] | None = None) -> int:
    """`adrank monitor --joined events.npz --request-log DIR`: prints calibration per model version and arm."""
    p = argparse.ArgumentParser(prog="adrank monitor", description="Calibration (mean predicted / observed) of "
                                "served scores and the live transfer ratio (online vs offline NE gain from FM "
                                "history) per model version and rollout arm, from a joined log.")
    p.add_argument("--joined", required=True, help="the EventLog .npz `adrank logs join` wrote")
    p.add_argument("--request-log", required=True, metavar="DIR", help="the request log the join read")
    p.add_argument("--repository", metavar="DIR", help="model repository: the offline NE gain from FM history of "
                   "each served version (its manifest's test metrics), for the live transfer ratio")
    p.add_argument("--serve-metrics", type=int, metavar="PORT", help="keep running and export the figures on "
                   "http://HOST:PORT/metrics (Prometheus gauges adrank_monitor_*)")
    p.add_argument("--host", default="127.0.0.1", help="address --serve-metrics binds (default loopback)")
    p.add_argument("--refresh-s", type=float, default=30.0, help="recompute at most this often (s) when scraped")
    try:
        a = p.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if a.serve_metrics is not None:
        if not 0 <= a.serve_metrics <= 65535 or not a.refresh_s > 0:
            print("error: --serve-metrics must be a port in 0..65535 and --refresh-s > 0", file=sys.stderr)
            return 2
        serve_metrics(MonitorCollector(a.joined, a.request_log, a.repository, refresh_s=a.refresh_s),
                      a.serve_metrics, a.host)
        return 0
    m = _match(EventLog.load(a.joined), a.request_log)
    rows, match = _calibration(m)
    from rich.console import Console
    from rich.table import Table

    table = Table(title="calibration (mean predicted / observed)")
    for col in ("model", "arm", "impressions", "clicks", "conversions", "mean pCTR", "CTR", "pCTR cal.",
                "mean pCVR|click", "CVR|click", "pCVR cal."):
        table.add_column(col, justify="left" if col in ("model", "arm") else "right")
    for r in rows:
        table.add_row(f"{r.model_name}/{r.model_version}", r.rollout_arm, f"{r.impressions:,}", f"{r.clicks:,}",
                      f"{r.conversions:,}", f"{r.mean_p_ctr:.4f}", f"{r.ctr:.4f}", f"{r.ctr_calibration:.3f}",
                      f"{r.mean_p_cvr_of_clicks:.4f}", f"{r.cvr_of_clicks:.4f}", f"{r.cvr_calibration:.3f}")
    console = Console()
    console.print(table)
    console.print(f"{match.matched:,} of {match.rows:,} joined rows matched their logged scores "
                  f"({match.unmatched:,} unmatched, {match.ambiguous:,} ambiguous keys left out)")
    tr = Table(title="FM history: online NE gain (transfer sample) next to offline")
    for col in ("model", "arm", "impressions", "clicks", "NE served", "NE no history", "online gain",
                "offline gain", "live TR"):
        tr.add_column(col, justify="left" if col in ("model", "arm") else "right")
    for t in _transfer(m, a.repository):
        tr.add_row(f"{t.model_name}/{t.model_version}", t.rollout_arm, f"{t.impressions:,}", f"{t.clicks:,}",
                   f"{t.ne_served:.4f}", f"{t.ne_no_history:.4f}", f"{t.online_ne_gain:.2%}",
                   f"{t.offline_ne_gain:.2%}", f"{t.live_transfer_ratio:.2f}")
    console.print(tr if tr.row_count else "no joined impression of a transfer-sampled request (serve with "
                  "--transfer-sample > 0 and a LoopFM model)")
    return 0 if rows else 1

if __name__ == "__main__":
    sys.exit(main())
