"""Calibration of served scores, per model version and rollout arm, from a joined log.

Why: a ranking model's expected values are bid × pCTR × pCVR, so a model whose pCTR runs 20% high
overbids by 20% even when its ranking (AUC) is fine. Once the labels have joined (`adrank logs join`),
each shown impression has the pCTR and pCVR it was served with (in the request log) and what happened;
calibration is mean predicted / observed, per (model, version, arm), so a canary arm can be compared
with the live one. pCVR is P(conversion | click), so it is calibrated over clicked impressions only.

The joined EventLog does not carry request ids, so rows are matched back to their logged candidate by
(request time, user, ad); a key that occurs in two logged requests is counted as ambiguous and left out.

Usage::

    rows = calibration(EventLog.load("runs/sim/joined.npz"), "runs/requestlog")
    adrank monitor --joined runs/sim/joined.npz --request-log runs/requestlog
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from models.data.requestlog import read_request_log
from models.data.schema import EventLog


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
                                                   "model_name", "model_version", "rollout_arm"])
    lengths = pc.list_value_length(table.column("ad_id")).to_numpy(zero_copy_only=False).astype(np.int64)
    parent = np.repeat(np.arange(table.num_rows), lengths)
    flat = {name: pc.list_flatten(table.column(name)).to_numpy(zero_copy_only=False)
            for name in ("ad_id", "p_ctr", "p_cvr")}
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


def calibration(joined: EventLog, request_log: str | Path) -> tuple[list[Calibration], MatchReport]:
    """Calibration per (model, version, arm) of the joined impressions, with how rows were matched."""
    index, flat, ambiguous = _served_scores(request_log)
    keys = zip(joined["ts_ms"].tolist(), joined["user_id"].tolist(), joined["ad_id"].tolist(), strict=True)
    at = np.array([index.get(k, -1) for k in keys], dtype=np.int64)
    ok = at >= 0
    rows = at[ok]
    click = joined["click"][ok].astype(np.float64)
    conv = joined["conversion"][ok].astype(np.float64)
    out = []
    groups = sorted({(flat["model_name"][i], int(flat["model_version"][i]), flat["rollout_arm"][i]) for i in rows})
    for name, version, arm in groups:
        g = np.array([(flat["model_name"][i], int(flat["model_version"][i]), flat["rollout_arm"][i])
                      == (name, version, arm) for i in rows], dtype=bool)
        p_ctr = flat["p_ctr"][rows[g]].astype(np.float64)
        p_cvr = flat["p_cvr"][rows[g]].astype(np.float64)
        clicked = click[g] > 0
        n_clicks = int(clicked.sum())
        out.append(Calibration(
            model_name=name, model_version=version, rollout_arm=arm, impressions=int(g.sum()), clicks=n_clicks,
            conversions=int(conv[g].sum()), mean_p_ctr=float(p_ctr.mean()), ctr=float(click[g].mean()),
            mean_p_cvr_of_clicks=float(p_cvr[clicked].mean()) if n_clicks else float("nan"),
            cvr_of_clicks=float(conv[g][clicked].mean()) if n_clicks else float("nan")))
    report = MatchReport(rows=len(at), matched=int(ok.sum()), unmatched=int((~ok).sum()), ambiguous=ambiguous)
    return out, report


def main(argv: list[str] | None = None) -> int:
    """`adrank monitor --joined events.npz --request-log DIR`: prints calibration per model version and arm."""
    p = argparse.ArgumentParser(prog="adrank monitor", description="Calibration (mean predicted / observed) of "
                                "served scores per model version and rollout arm, from a joined log.")
    p.add_argument("--joined", required=True, help="the EventLog .npz `adrank logs join` wrote")
    p.add_argument("--request-log", required=True, metavar="DIR", help="the request log the join read")
    try:
        a = p.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    rows, match = calibration(EventLog.load(a.joined), a.request_log)
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
    return 0 if rows else 1

if __name__ == "__main__":
    sys.exit(main())
