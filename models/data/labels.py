"""Label events of served impressions: what was shown, and the clicks and conversions that came later.

Why a file of its own: labels arrive long after the request (a conversion can take days), from a
different system than the ranking server (the ad client, the advertiser's pixel). They meet the
request log only in the join (`models.logjoin`), keyed by (request_id, ad_id).

One row per event:

* `request_id`, `ad_id`: the served candidate the event belongs to;
* `impression_ms`: when the ad was shown (the attribution windows start here);
* `event`: "impression" (the ad was shown), "click" or "conversion";
* `event_ms`: when the event happened (= `impression_ms` for an impression).

Impressions are events too because the server cannot know which of the candidates it ranked were
shown: the caller decides (top-k of the response, a slot that failed to render, ...). The join emits
one training row per impression it can match to a logged request.

Usage::

    write_labels("runs/sim/labels.parquet", labels_table(request_id, ad_id, impression_ms, event, event_ms))
    labels = read_labels("runs/sim/labels.parquet")
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

EVENT_TYPES: tuple[str, ...] = ("impression", "click", "conversion")
LABELS_TAG = b"labels/1"

LABEL_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("ad_id", pa.int64(), nullable=False),
        pa.field("impression_ms", pa.int64(), nullable=False),
        pa.field("event", pa.string(), nullable=False),
        pa.field("event_ms", pa.int64(), nullable=False),
    ],
    metadata={b"adrank.schema": LABELS_TAG},
)


class LabelError(ValueError):
    """A label table does not fit LABEL_SCHEMA (the message names the column and the value)."""


def labels_table(request_id: Sequence[str], ad_id: Sequence[int] | np.ndarray,
                 impression_ms: Sequence[int] | np.ndarray, event: Sequence[str],
                 event_ms: Sequence[int] | np.ndarray) -> pa.Table:
    """A checked label table from equal-length columns."""
    table = pa.table({"request_id": pa.array(list(request_id), pa.string()),
                      "ad_id": pa.array(np.asarray(ad_id, np.int64)),
                      "impression_ms": pa.array(np.asarray(impression_ms, np.int64)),
                      "event": pa.array(list(event), pa.string()),
                      "event_ms": pa.array(np.asarray(event_ms, np.int64))}, schema=LABEL_SCHEMA)
    check_labels(table)
    return table


def check_labels(table: pa.Table) -> None:
    """Raises LabelError when a column is missing, null, or an event type is unknown."""
    for f in LABEL_SCHEMA:
        if f.name not in table.column_names:
            raise LabelError(f"label table lacks column {f.name!r}")
        if table.column(f.name).null_count:
            raise LabelError(f"label column {f.name!r} has nulls")
    unknown = set(table.column("event").unique().to_pylist()) - set(EVENT_TYPES)
    if unknown:
        raise LabelError(f"unknown label events {sorted(unknown)}; expected one of {EVENT_TYPES}")


def write_labels(path: str | Path, table: pa.Table) -> Path:
    """Writes atomically (temp file in the same folder, fsync, rename): the file is complete or absent."""
    check_labels(table)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table.select(LABEL_SCHEMA.names).cast(LABEL_SCHEMA), tmp, compression="zstd")
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def read_labels(source: str | Path | pa.Table) -> pa.Table:
    """A label table from a Parquet file (or a table already in memory), checked."""
    table = source if isinstance(source, pa.Table) else pq.read_table(source)
    check_labels(table)
    return table.select(LABEL_SCHEMA.names)
