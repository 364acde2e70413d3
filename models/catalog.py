"""A catalog of ads and users saved beside a trained model, so clients can build realistic requests.

Numpy-only `.npz`: the scoring client and the load generator read it without torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.data.schema import EventLog
from models.features import recent_categories_from_log


def build_catalog(events: EventLog, recent_k: int = 5) -> dict[str, np.ndarray]:
    """Per ad: its ids, category and mean bid. Per user: segment and the categories of the last clicks
    in the log (what a feature store would hand the caller at the end of the period)."""
    ad_ids, first = np.unique(events["ad_id"], return_index=True)
    bid_sum = np.bincount(np.searchsorted(ad_ids, events["ad_id"]), weights=events["bid"].astype(np.float64))
    bid_cnt = np.bincount(np.searchsorted(ad_ids, events["ad_id"]))
    users, last = np.unique(events["user_id"][::-1], return_index=True)
    last = len(events) - 1 - last  # last row of each user (events are time sorted)
    # recent clicks *including* the last event: append a sentinel "now" row per user after the log
    recent = recent_categories_from_log(
        np.r_[events["user_id"], users], np.r_[events["ts_ms"], np.full(len(users), events["ts_ms"].max() + 1)],
        np.r_[events["category"], np.zeros(len(users), np.int32)], np.r_[events["click"], np.zeros(len(users), np.int8)],
        recent_k)[len(events):]
    return {
        "ad_id": ad_ids, "advertiser_id": events["advertiser_id"][first], "campaign_id": events["campaign_id"][first],
        "category": events["category"][first], "bid": (bid_sum / bid_cnt).astype(np.float32),
        "user_id": users, "user_segment": events["user_segment"][last], "user_recent": recent,
        "max_ts_ms": np.array([events["ts_ms"].max()]),
    }


def save_catalog(catalog: dict[str, np.ndarray], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **catalog)
    tmp.replace(path)
    return path


def load_catalog(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}
