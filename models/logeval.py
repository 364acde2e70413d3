"""How a VM retrained on served traffic scores the traffic that came next, against the world's oracle.

Why: a model retrained from the joined request log is worth something only if it ranks *future*
impressions, not a slice of the hours it was trained on. `adrank logs eval` joins a later stretch of
the request log with its labels (the same attribution windows as `logs join`), scores those impressions
with the checkpoint, and reports CTR AUC / NE beside chance (AUC 0.5; NE 1.0 is a constant prediction at
the base rate) and beside the oracle — the simulator's true p_click of the same impressions
(`truth.parquet`), the best any model could do. The model's AUC and NE carry 95 % intervals from
resampling whole requests (seeded).

Features are computed exactly as training computes them (`features_from_events` with the checkpoint's
feature spec). The recent-clicked-categories feature looks only backwards in time, so rows of the
earlier, training traffic (`context`, the EventLog `logs join` wrote for training) may be given: they
are prepended so the later rows see the clicks before them, and are not scored themselves.

Usage::

    adrank logs eval --checkpoint retrained/vm.pt --request-log LOG_NEXT --labels SIM_NEXT/labels.parquet \\
        --truth SIM_NEXT/truth.parquet --context joined.npz
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from models.data.schema import EventLog
from models.features import FeatureSpec, features_from_events
from models.logjoin import add_join_flags, join_logs
from models.metrics import summarize
from models.train import VMData, load_checkpoint, predict


def attach_truth(events: EventLog, request_ids: np.ndarray, truth_path: str | Path) -> EventLog:
    """`events` with p_click / p_conversion filled from the simulator's truth table, matched by
    (request_id, ad_id); a joined row without a truth row is an error (a truth file of other traffic)."""
    truth = pq.read_table(truth_path, columns=["request_id", "ad_id", "p_click", "p_conversion"])
    index = {(r, int(a)): i for i, (r, a) in enumerate(zip(truth.column("request_id").to_pylist(),
                                                            truth.column("ad_id").to_numpy(), strict=True))}
    ads = events["ad_id"]
    rows = np.array([index.get((r, int(a)), -1) for r, a in zip(request_ids, ads, strict=True)], dtype=np.int64)
    if len(rows) and rows.min() < 0:
        missing = int((rows < 0).sum())
        raise ValueError(f"--truth: {missing} of {len(rows)} joined impressions have no row in {truth_path} "
                         "(it must be the truth file of the same simulation as --labels)")
    cols = dict(events.columns)
    cols["p_click"] = truth.column("p_click").to_numpy().astype(np.float32)[rows]
    cols["p_conversion"] = truth.column("p_conversion").to_numpy().astype(np.float32)[rows]
    return EventLog(cols, events.cardinality, events.source, events.meta)


def _bootstrap(click: np.ndarray, p_ctr: np.ndarray, request_ids: np.ndarray, *, resamples: int = 200,
               seed: int = 0) -> dict[str, list[float]]:
    """95 % percentile intervals of CTR AUC and NE, resampling whole requests (a request's impressions share
    a user and a moment, so they are not independent draws)."""
    _, group = np.unique(request_ids.astype(str), return_inverse=True)
    members = np.split(np.argsort(group, kind="stable"), np.cumsum(np.bincount(group))[:-1])
    rng = np.random.default_rng(seed)
    aucs, nes = [], []
    for _ in range(resamples):
        rows = np.concatenate([members[i] for i in rng.integers(0, len(members), len(members))])
        if 0 < click[rows].sum() < len(rows):
            s = summarize(click[rows], p_ctr[rows])
            aucs.append(s["auc"])
            nes.append(s["ne"])
    return {"ctr_auc_interval_95": np.percentile(aucs, [2.5, 97.5]).tolist(),
            "ctr_ne_interval_95": np.percentile(nes, [2.5, 97.5]).tolist(), "bootstrap_resamples": len(aucs)}


def _prepend(context: EventLog, events: EventLog) -> tuple[EventLog, np.ndarray]:
    """Context rows then the evaluated ones, as one log (one id space); the evaluated rows' positions."""
    cols = {k: np.concatenate([context[k], events[k]]) for k in events.columns}
    cardinality = {k: max(int(context.cardinality.get(k, 0)), int(v)) for k, v in events.cardinality.items()}
    return EventLog(cols, cardinality, events.source, events.meta), np.arange(len(context), len(cols["user_id"]))


def evaluate_later_traffic(checkpoint: str | Path, request_log: str | Path, labels: str | Path,
                           truth: str | Path, *, context: str | Path | None = None, click_window_s: float = 3_600.0,
                           conversion_window_s: float = 7 * 86_400.0) -> dict:
    """The report `adrank logs eval` prints (module docstring): model and oracle metrics on the joined
    impressions of `request_log` + `labels`, with the join's counts."""
    model, payload = load_checkpoint(checkpoint)
    if model.config.history_dim:
        raise ValueError("--checkpoint: a LoopFM VM reads FM history from the cache, which this evaluation does "
                         "not open; evaluate a VM without history (what `train vm --from-log` trains)")
    events, report, request_ids = join_logs(request_log, labels, click_window_s=click_window_s,
                                            conversion_window_s=conversion_window_s)
    if not len(events):
        raise ValueError(f"--request-log / --labels: no impression joined ({report.to_dict()})")
    events = attach_truth(events, request_ids, truth)
    rows = np.arange(len(events))
    if context is not None:
        earlier = EventLog.load(context)
        last, first = (int(earlier["ts_ms"].max()) if len(earlier) else -1), int(events["ts_ms"].min())
        if last >= first:
            raise ValueError(f"--context: its rows must all be earlier than the evaluated traffic (got rows up to "
                             f"{last} ms, evaluated traffic from {first} ms)")
        full, rows = _prepend(earlier, events)
    else:
        full = events
    spec = FeatureSpec.from_dict(payload["feature_spec"])
    data = VMData(full, spec, features_from_events(spec, full), np.empty(0, np.int64), rows)
    p_ctr, p_cvr = predict(model, data, rows)
    click, conversion = events["click"], events["conversion"]
    clicked = click.astype(bool)
    out = {"impressions": int(len(events)), "clicks": int(click.sum()), "conversions": int(conversion.sum()),
           "first_ms": int(events["ts_ms"].min()), "last_ms": int(events["ts_ms"].max()),
           "context_rows": int(len(full) - len(events)), "join": report.to_dict(),
           "model": {f"ctr_{k}": v for k, v in summarize(click, p_ctr).items()},
           "oracle": {f"ctr_{k}": v for k, v in summarize(click, events["p_click"]).items()}}
    if clicked.any():
        out["model"].update({f"cvr_{k}": v for k, v in summarize(conversion[clicked], p_cvr[clicked]).items()})
        out["oracle"].update({f"cvr_{k}": v for k, v in
                              summarize(conversion[clicked], events["p_conversion"][clicked]).items()})
    out["model"].update(_bootstrap(click, p_ctr, request_ids))
    m, o = out["model"], out["oracle"]
    # NE 1 is the base-rate predictor: the share of it the model closes, against what the oracle closes
    out["ne_gap_closed"] = (1.0 - m["ctr_ne"]) / (1.0 - o["ctr_ne"]) if o["ctr_ne"] < 1.0 else float("nan")
    return out


def main(argv: list[str] | None = None) -> int:
    """`adrank logs eval ...`: 0 on success, 2 on bad input."""
    p = argparse.ArgumentParser(prog="adrank logs eval", description="Score later served traffic with a VM "
                                "checkpoint: CTR AUC / NE against chance and the world's oracle.")
    p.add_argument("--checkpoint", required=True, help="vm.pt (e.g. what `train vm --from-log` wrote)")
    add_join_flags(p, what=" of the later traffic")
    p.add_argument("--truth", required=True, help="truth.parquet of the same simulation (true p_click)")
    p.add_argument("--context", default=None, help="the EventLog of the earlier traffic (logs join): prepended "
                   "for the backward-looking features, not scored")
    p.add_argument("--json", default=None, help="write the report here too")
    try:
        a = p.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        r = evaluate_later_traffic(a.checkpoint, a.request_log, a.labels, a.truth, context=a.context,
                                   click_window_s=a.click_window, conversion_window_s=a.conversion_window)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    m, o = r["model"], r["oracle"]
    hours = (r["last_ms"] - r["first_ms"]) / 3.6e6
    print(f"{r['impressions']} impressions ({r['clicks']} clicks, {r['conversions']} conversions) over {hours:.2f} "
          f"simulated hours, {r['context_rows']} earlier rows as context")
    (alo, ahi), (nlo, nhi) = m["ctr_auc_interval_95"], m["ctr_ne_interval_95"]
    print(f"model : CTR AUC {m['ctr_auc']:.4f} [95 % {alo:.4f}, {ahi:.4f}] NE {m['ctr_ne']:.4f} "
          f"[{nlo:.4f}, {nhi:.4f}]" +
          (f"; CVR AUC {m['cvr_auc']:.4f}" if "cvr_auc" in m else ""))
    print(f"oracle: CTR AUC {o['ctr_auc']:.4f} NE {o['ctr_ne']:.4f}" +
          (f"; CVR AUC {o['cvr_auc']:.4f}" if "cvr_auc" in o else ""))
    print(f"chance: CTR AUC 0.5 NE 1.0; the model closes {r['ne_gap_closed']:.1%} of the oracle's NE gain over chance")
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
