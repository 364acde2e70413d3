"""The label join: request log + delayed labels → an `EventLog` of the impressions that were shown.

Why: a model learns from what it served only if each shown impression meets the features it was
scored with *and* the outcome that came later — and only outcomes inside an attribution window, since
an online trainer cannot wait forever and a label that would have arrived after the cut must not leak
into training. Feast logs served features and TFDV compares them, but neither joins delayed labels.

Rules (all counts land in `JoinReport`, nothing is dropped silently):

* One row per *shown* impression (an "impression" label) whose request is in the log and whose ad is
  among that request's candidates; the features are the logged ones (request time, context, ids, bid).
  Impressions of requests the log lacks (sampled out, dropped by the sink) are counted, not invented.
* A click counts when it lands within `click_window_s` of the impression; a conversion when it lands
  within `conversion_window_s` of the impression (both measured from the impression time). Later
  labels are counted as late and never joined; labels timed before their impression are counted as
  early (clock skew) and not joined either.
* `EventLog` holds conversion *after a click* (`conversion <= click`, ESMM's P(conversion | click)).
  A conversion whose impression has no joined click (its click came late, or never came) is counted
  in `conversions_without_click` and not joined: inventing a click would put a label outside its
  window into training.
* `p_click` / `p_conversion` are NaN: online, the truth is unknown (the simulator's `truth.parquet`
  is for oracle metrics only).

Usage::

    events = join("runs/requestlog", "runs/sim/labels.parquet", click_window_s=3_600, conversion_window_s=7 * 86_400)
    events.meta["join"]  # the JoinReport as a dict
    events.save("runs/joined/events.npz")  # what `adrank train vm --events-file` reads
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from models.data.labels import EVENT_TYPES, read_labels
from models.data.requestlog import read_request_log
from models.data.schema import EventLog, empty_columns

SOURCE = "requestlog"
_LOG_COLUMNS = ("request_id", "request_time_ms", "user_id", "placement", "device", "hour", "user_segment", "ad_id",
                "advertiser_id", "campaign_id", "category", "bid")
_CATEGORICAL = ("user_id", "ad_id", "advertiser_id", "campaign_id", "category", "placement", "device", "user_segment")


@dataclass(frozen=True)
class JoinReport:
    """What the join did with every request and label it read.

    Every click and conversion label lands in exactly one count: joined (`clicks`, `conversions`),
    `repeat_*`, `late_*`, `early_*`, `conversions_without_click`, `orphan_labels` or `labels_of_unjoined`.
    """

    requests: int  # distinct logged requests
    duplicate_requests: int  # log rows repeating a request id already seen (the first is kept)
    impressions: int  # distinct shown (request_id, ad_id) pairs in the labels
    duplicate_impressions: int
    rows: int  # impressions joined = rows of the EventLog
    unlogged_impressions: int  # the request is not in the log (sampled out, dropped, another server)
    unknown_candidates: int  # the request is logged but the ad was not one of its candidates
    clicks: int  # joined rows with click = 1
    late_clicks: int  # after click_window_s
    early_clicks: int  # before the impression
    repeat_clicks: int  # further clicks on an impression already clicked in the window
    conversions: int  # joined rows with conversion = 1
    late_conversions: int
    early_conversions: int
    conversions_without_click: int  # in the window, but the impression has no joined click
    repeat_conversions: int
    orphan_labels: int  # clicks and conversions with no impression event
    labels_of_unjoined: int  # clicks and conversions of impressions that could not be joined

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _codes(*arrays: pa.ChunkedArray | pa.Array) -> list[np.ndarray]:
    """Shared integer codes for the strings of several arrays (one dictionary over all of them)."""
    chunks = [a.chunks if isinstance(a, pa.ChunkedArray) else [a] for a in arrays]
    encoded = pc.dictionary_encode(pa.chunked_array([c for cs in chunks for c in cs], type=pa.string()))
    flat = np.concatenate([c.indices.to_numpy(zero_copy_only=False).astype(np.int64) for c in encoded.chunks]) \
        if encoded.num_chunks else np.empty(0, np.int64)
    out, start = [], 0
    for a in arrays:
        out.append(flat[start:start + len(a)])
        start += len(a)
    return out


def _first_match(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index into `sorted_keys` of each key and whether it is there."""
    pos = np.searchsorted(sorted_keys, keys)
    pos_c = np.minimum(pos, max(len(sorted_keys) - 1, 0))
    found = (pos < len(sorted_keys)) & (sorted_keys[pos_c] == keys) if len(sorted_keys) else np.zeros(len(keys), bool)
    return pos_c, found


def _window_labels(kind_mask: np.ndarray, imp_of: np.ndarray, of_row: np.ndarray, delay: np.ndarray,
                   window_ms: int, n_imp: int) -> tuple[np.ndarray, int, int, int]:
    """Per impression: whether a label of this kind landed in the window; counts of late, early, repeats
    (labels of joined rows only: labels of impressions that are not rows are counted apart)."""
    m = kind_mask & of_row
    early = int((m & (delay < 0)).sum())
    late = int((m & (delay > window_ms)).sum())
    inside = m & (delay >= 0) & (delay <= window_ms)
    hits = np.bincount(imp_of[inside], minlength=n_imp)
    return hits > 0, late, early, int(np.maximum(hits - 1, 0).sum())


def join_logs(request_log: str | Path, labels: str | Path | pa.Table, *, click_window_s: float,
              conversion_window_s: float,
              cardinality: Mapping[str, int] | None = None) -> tuple[EventLog, JoinReport, np.ndarray]:
    """The join, returning the events, the report and each row's request id (object array, row order).

    `cardinality`: the id space of the model to be trained (default: max id + 1 of the joined rows).
    """
    if not click_window_s > 0 or not conversion_window_s > 0:
        raise ValueError(f"attribution windows must be > 0 s, got click {click_window_s}, "
                         f"conversion {conversion_window_s}")
    log = read_request_log(request_log, columns=_LOG_COLUMNS)
    lab = read_labels(labels)
    log_code, lab_code = _codes(log.column("request_id"), lab.column("request_id"))

    # --- the log: first row per request id, its candidates flattened
    _, first_row = np.unique(log_code, return_index=True)
    keep_row = np.zeros(len(log_code), bool)
    keep_row[first_row] = True
    log = log.filter(pa.array(keep_row)).combine_chunks()  # one chunk: parent indices are then global
    log_code = log_code[keep_row]
    flat = {name: pc.list_flatten(log.column(name)).to_numpy() for name in
            ("ad_id", "advertiser_id", "campaign_id", "category", "bid")}
    parent = pc.list_parent_indices(log.column("ad_id")).to_numpy().astype(np.int64)

    # --- shared dense ranks for ad ids make (request, ad) one int64 key
    lab_ad = lab.column("ad_id").to_numpy()
    ads = np.unique(np.concatenate([flat["ad_id"], lab_ad]))
    n_ads = max(len(ads), 1)
    n_codes = int(max(log_code.max(initial=-1), lab_code.max(initial=-1))) + 1
    if n_codes * n_ads >= 2**62:
        raise ValueError(f"{n_codes} request ids x {n_ads} ads overflow the join key")
    cand_key = log_code[parent] * n_ads + np.searchsorted(ads, flat["ad_id"])
    cand_sorted, cand_first = np.unique(cand_key, return_index=True)  # first slot of a repeated ad
    lab_key = lab_code * n_ads + np.searchsorted(ads, lab_ad)

    # --- impressions: one per (request, ad), earliest time
    event = pc.index_in(lab.column("event"), pa.array(EVENT_TYPES)).to_numpy()
    imp_ms_all = lab.column("impression_ms").to_numpy()
    ev_ms = lab.column("event_ms").to_numpy()
    is_imp = event == 0
    order = np.lexsort((imp_ms_all[is_imp], lab_key[is_imp]))
    imp_key_raw, imp_ms_raw = lab_key[is_imp][order], imp_ms_all[is_imp][order]
    imp_key, first_imp = np.unique(imp_key_raw, return_index=True)
    imp_ms = imp_ms_raw[first_imp]
    n_imp = len(imp_key)

    # --- impressions that meet a logged candidate become rows
    slot_of, logged = _first_match(cand_sorted, imp_key)
    request_logged = np.isin(imp_key // n_ads, log_code)

    # --- clicks and conversions of those rows, attributed within the windows
    imp_of, has_imp = _first_match(imp_key, lab_key)
    has_imp &= ~is_imp
    of_row = has_imp & logged[imp_of] if n_imp else has_imp
    delay = ev_ms - imp_ms[imp_of] if n_imp else np.zeros(len(ev_ms), np.int64)
    clicked, late_c, early_c, rep_c = _window_labels(event == 1, imp_of, of_row, delay,
                                                     round(click_window_s * 1000), n_imp)
    conv_in, late_v, early_v, rep_v = _window_labels(event == 2, imp_of, of_row, delay,
                                                     round(conversion_window_s * 1000), n_imp)
    converted = conv_in & clicked
    flat_idx = cand_first[slot_of[logged]]
    row_of = parent[flat_idx]
    joined_imp = np.flatnonzero(logged)

    cols = empty_columns(len(flat_idx))
    per_request = {c: log.column(c).to_numpy()[row_of] for c in
                   ("request_time_ms", "user_id", "placement", "device", "hour", "user_segment")}
    cols["ts_ms"][:] = per_request.pop("request_time_ms")
    for c, v in per_request.items():
        cols[c][:] = v
    for c in ("ad_id", "advertiser_id", "campaign_id", "category", "bid"):
        cols[c][:] = flat[c][flat_idx]
    cols["click"][:] = clicked[joined_imp]
    cols["conversion"][:] = converted[joined_imp]
    slot = flat_idx - np.searchsorted(parent, row_of)  # position among the request's candidates
    sort = np.lexsort((slot, row_of, cols["user_id"], cols["ts_ms"]))
    cols = {k: v[sort] for k, v in cols.items()}
    cols["event_id"] = np.arange(len(sort), dtype=np.int64)  # join order: stable for the same inputs
    request_ids = np.asarray(log.column("request_id").to_numpy(zero_copy_only=False), dtype=object)[row_of[sort]]

    report = JoinReport(
        requests=len(log_code), duplicate_requests=int((~keep_row).sum()), impressions=n_imp,
        duplicate_impressions=int(is_imp.sum()) - n_imp, rows=len(sort),
        unlogged_impressions=int((~request_logged).sum()), unknown_candidates=int((request_logged & ~logged).sum()),
        clicks=int(cols["click"].sum()), late_clicks=late_c, early_clicks=early_c, repeat_clicks=rep_c,
        conversions=int(cols["conversion"].sum()), late_conversions=late_v, early_conversions=early_v,
        conversions_without_click=int((conv_in & ~clicked & logged).sum()), repeat_conversions=rep_v,
        orphan_labels=int((~is_imp & ~has_imp).sum()), labels_of_unjoined=int((has_imp & ~of_row).sum()))
    if cardinality is None:
        cardinality = {c: int(cols[c].max(initial=-1)) + 1 for c in _CATEGORICAL}
        cardinality["hour"] = 24
    meta = {"join": report.to_dict(), "click_window_s": click_window_s, "conversion_window_s": conversion_window_s,
            "request_log": str(request_log), "labels": "<table>" if isinstance(labels, pa.Table) else str(labels)}
    return EventLog(cols, dict(cardinality), SOURCE, meta), report, request_ids


def join(request_log_dir: str | Path, labels: str | Path | pa.Table, click_window_s: float,
         conversion_window_s: float, *, cardinality: Mapping[str, int] | None = None) -> EventLog:
    """The joined `EventLog` (its `meta["join"]` holds the `JoinReport`); see `join_logs`."""
    events, _, _ = join_logs(request_log_dir, labels, click_window_s=click_window_s,
                             conversion_window_s=conversion_window_s, cardinality=cardinality)
    return events


def add_join_flags(p: argparse.ArgumentParser, *, what: str = "") -> None:
    """The flags of a join: the request log, its labels and the two attribution windows (`logs join`,
    `logs eval`). `what` qualifies the first two helps ("of the later traffic")."""
    p.add_argument("--request-log", required=True, help=f"folder of request-log Parquet files{what}")
    p.add_argument("--labels", required=True, help=f"labels.parquet{what} (adrank simulate writes one)")
    p.add_argument("--click-window", type=float, default=3_600.0, help="seconds after the impression (default 1 h)")
    p.add_argument("--conversion-window", type=float, default=7 * 86_400.0,
                   help="seconds after the impression (default 7 days)")


def main(argv: list[str] | None = None) -> int:
    """`adrank logs join --request-log DIR --labels FILE --out events.npz`: 0 on success, 2 on bad input."""
    p = argparse.ArgumentParser(prog="adrank logs join", description="Join the request log with delayed labels "
                                "into an EventLog the trainer reads (train vm --events-file).")
    add_join_flags(p)
    p.add_argument("--out", required=True, help="the EventLog .npz to write")
    try:
        a = p.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        events, report, _ = join_logs(a.request_log, a.labels, click_window_s=a.click_window,
                                      conversion_window_s=a.conversion_window)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    events.save(a.out)
    r = report
    print(f"{r.rows} impressions joined from {r.requests} logged requests ({r.unlogged_impressions} unlogged, "
          f"{r.unknown_candidates} unknown candidates); clicks {r.clicks} (late {r.late_clicks}), conversions "
          f"{r.conversions} (late {r.late_conversions}, without click {r.conversions_without_click}) → {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
