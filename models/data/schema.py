"""The one event schema every data source produces.

An event is one ad impression of one user at one time, with its click / conversion outcome.
Columns are numpy arrays of equal length, sorted by (ts_ms, user_id) so a prefix is "the past".
`event_id` identifies an event for as long as the source keeps it (sources number events in the order
they generate or read them), so a re-run of the embed job or of the DAS step recognises what it has seen.
`p_click` / `p_conversion` hold the true probabilities where the source knows them (synthetic)
and NaN elsewhere, so oracle metrics are computed, never assumed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

EVENT_COLUMNS: dict[str, np.dtype] = {
    "event_id": np.dtype(np.int64),  # the source's stable id of the event: DAS log and cache rows are keyed on it
    "user_id": np.dtype(np.int64),
    "ts_ms": np.dtype(np.int64),
    "ad_id": np.dtype(np.int64),
    "advertiser_id": np.dtype(np.int64),
    "campaign_id": np.dtype(np.int64),
    "category": np.dtype(np.int32),
    "placement": np.dtype(np.int32),
    "device": np.dtype(np.int32),
    "hour": np.dtype(np.int32),
    "user_segment": np.dtype(np.int32),
    "bid": np.dtype(np.float32),
    "click": np.dtype(np.int8),
    "conversion": np.dtype(np.int8),  # conversion after a click; 0 when click == 0
    "p_click": np.dtype(np.float32),  # ground truth where known, else NaN
    "p_conversion": np.dtype(np.float32),  # P(conversion | click), ground truth where known, else NaN
}

NON_NEGATIVE = ("event_id", "user_id", "ts_ms", "ad_id", "advertiser_id", "campaign_id", "category", "placement", "device",
                "user_segment")


class SchemaError(ValueError):
    """An event table does not satisfy the schema (missing column, wrong length, bad value)."""


@dataclass(frozen=True)
class EventLog:
    """Columnar, time-sorted events plus the cardinalities models need to size embeddings.

    `cardinality` maps a categorical column to (max id + 1) over the *whole* source, so train and
    test tables built from one source share one id space.
    """

    columns: Mapping[str, np.ndarray]
    cardinality: Mapping[str, int]
    source: str
    meta: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [c for c in EVENT_COLUMNS if c not in self.columns]
        if missing:
            raise SchemaError(f"event table lacks columns {missing}")
        n = len(self.columns["user_id"])
        for name, dtype in EVENT_COLUMNS.items():
            col = self.columns[name]
            if col.dtype != dtype:
                raise SchemaError(f"column {name!r} has dtype {col.dtype}, expected {dtype}")
            if col.ndim != 1 or len(col) != n:
                raise SchemaError(f"column {name!r} has shape {col.shape}, expected ({n},)")
        for name in NON_NEGATIVE:
            if n and int(self.columns[name].min()) < 0:
                raise SchemaError(f"column {name!r} has negative values")
        if n and not np.all(np.isfinite(self.columns["bid"])):
            raise SchemaError("column 'bid' has non-finite values")
        if n and np.any(self.columns["conversion"] > self.columns["click"]):
            raise SchemaError("a conversion without a click")

    def __len__(self) -> int:
        return len(self.columns["user_id"])

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def take(self, index: np.ndarray) -> EventLog:
        """Rows at `index` (an int array or a boolean mask), same cardinalities and source."""
        return EventLog({k: v[index] for k, v in self.columns.items()}, self.cardinality, self.source, self.meta)

    def sorted_by_time(self) -> EventLog:
        order = np.lexsort((self.columns["user_id"], self.columns["ts_ms"]))
        return self.take(order)

    @property
    def has_ground_truth(self) -> bool:
        return bool(len(self)) and bool(np.all(np.isfinite(self.columns["p_click"])))

    def save(self, path: str | Path) -> None:
        """Writes an .npz atomically (temp file + rename): a crash never leaves half a file."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        header = json.dumps({"cardinality": dict(self.cardinality), "source": self.source, "meta": dict(self.meta)})
        with open(tmp, "wb") as fh:
            np.savez(fh, __header__=np.frombuffer(header.encode(), dtype=np.uint8), **dict(self.columns))
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> EventLog:
        with np.load(path) as data:  # allow_pickle stays False: an .npz of plain arrays only
            header = json.loads(bytes(data["__header__"]).decode())
            missing = [k for k in EVENT_COLUMNS if k not in data.files]
            if missing:
                raise SchemaError(f"{path}: event file lacks columns {missing} (written by an older `adrank data`?)")
            cols = {k: data[k] for k in EVENT_COLUMNS}
        return cls(cols, header["cardinality"], header["source"], header["meta"])


def empty_columns(n: int) -> dict[str, np.ndarray]:
    """Zeroed columns of length n (NaN for the ground-truth columns), for sources to fill in."""
    cols = {name: np.zeros(n, dtype=dt) for name, dt in EVENT_COLUMNS.items()}
    cols["event_id"] = np.arange(n, dtype=np.int64)  # generation / file order; travels with the row when sorted
    cols["p_click"][:] = np.nan
    cols["p_conversion"][:] = np.nan
    return cols
