"""The request-log record: one row per scored request, as the serving sink writes it and the join reads it.

Why here and not in `serving`: the log is a data format that offline jobs (the label join, replay,
monitors) read without the serving stack, and `models` never imports `serving`. The sink
(`serving.requestlog`) writes these rows; `models.logjoin` turns them, with labels, into an `EventLog`.

A row holds what the model saw and what it answered, so a served score can be explained, joined with
its labels and (later) replayed:

* the request: `request_id`, `request_time_ms` (the time the history lookups used), `user_id`, the
  context as the model's integer indices (`placement`, `device`, `hour`, `user_segment`) and the
  user's `recent_categories`;
* the candidates, as list columns in request order: `ad_id`, `advertiser_id`, `campaign_id`,
  `category`, `bid`, `dense_features` (one list per candidate, empty when none were sent);
* who served it: `model_name`, `model_version`, `rollout_arm`, `backend`, `fm_version`, `snapshot_id`
  (the embedding snapshot the history came from), `flags`, `stage_us` (stage name → µs);
* the answer: `p_ctr`, `p_cvr`, `expected_value` per candidate in request order (NaN where the
  writer did not see a score) and `order`, the request indices of the returned candidates, best first;
* `logged_at_ms`: the wall clock when the row was made (request time may be simulated);
* `p_ctr_no_history`, `p_cvr_no_history`: for the sampled share of a LoopFM model's traffic that was
  also scored with its FM history masked out (the version's no-history path, as history dropout hides it
  in training), those scores per candidate in request order; empty lists for every other request. They
  give the live transfer ratio once labels join (`models.monitor`).
* `shadow_model_version`, `p_ctr_shadow`, `p_cvr_shadow`: for a live request that a rollout's shadow
  version also scored (off the response path, `serving.pipeline.shadow`), that version and its scores per
  candidate in request order — the pair of score vectors a shadow comparison needs; 0 and empty lists for
  every other request (not mirrored, or the mirror was dropped under load or failed).

Older files are read as if the columns they lack were empty: `requestlog/1` (without the no-history and
shadow columns) and `requestlog/2` (without the shadow columns).

Usage::

    record = RequestRecord(request_id="r1", request_time_ms=t, user_id=7, ad_id=[3, 9], ...)
    table = records_to_table([record])
    table = read_request_log("runs/requestlog")
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_TAG = b"requestlog/3"
"""Stored in every file's schema metadata under b"adrank.schema"; readers refuse other tags (but V1_TAG, V2_TAG)."""
V1_TAG = b"requestlog/1"
"""The first layout: REQUEST_LOG_SCHEMA without the no-history and shadow columns; readers upgrade it."""
V2_TAG = b"requestlog/2"
"""The second layout: without the shadow columns; readers upgrade it."""

CANDIDATE_COLUMNS: dict[str, np.dtype] = {
    "ad_id": np.dtype(np.int64),
    "advertiser_id": np.dtype(np.int64),
    "campaign_id": np.dtype(np.int64),
    "category": np.dtype(np.int32),
    "bid": np.dtype(np.float64),
    "p_ctr": np.dtype(np.float32),
    "p_cvr": np.dtype(np.float32),
    "expected_value": np.dtype(np.float64),
}
"""List columns with one value per candidate, in request order."""

NO_HISTORY_COLUMNS = ("p_ctr_no_history", "p_cvr_no_history")
"""Scores with FM history masked out, for the sampled requests that were scored so (else empty lists)."""
SHADOW_SCORE_COLUMNS = ("p_ctr_shadow", "p_cvr_shadow")
"""The shadow version's scores, for the live requests it mirrored (else empty lists)."""
SHADOW_COLUMNS = ("shadow_model_version", *SHADOW_SCORE_COLUMNS)

REQUEST_LOG_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("request_time_ms", pa.int64(), nullable=False),
        pa.field("logged_at_ms", pa.int64(), nullable=False),
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("placement", pa.int32(), nullable=False),
        pa.field("device", pa.int32(), nullable=False),
        pa.field("hour", pa.int32(), nullable=False),
        pa.field("user_segment", pa.int32(), nullable=False),
        pa.field("recent_categories", pa.list_(pa.int32()), nullable=False),
        *(pa.field(name, pa.list_(pa.from_numpy_dtype(t)), nullable=False) for name, t in CANDIDATE_COLUMNS.items()
          if name not in ("p_ctr", "p_cvr", "expected_value")),
        pa.field("dense_features", pa.list_(pa.list_(pa.float32())), nullable=False),
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.int64(), nullable=False),
        pa.field("rollout_arm", pa.string(), nullable=False),
        pa.field("backend", pa.string(), nullable=False),
        pa.field("fm_version", pa.string(), nullable=False),
        pa.field("snapshot_id", pa.string(), nullable=False),
        pa.field("flags", pa.list_(pa.string()), nullable=False),
        pa.field("stage_us", pa.map_(pa.string(), pa.int64()), nullable=False),
        *(pa.field(name, pa.list_(pa.from_numpy_dtype(CANDIDATE_COLUMNS[name])), nullable=False)
          for name in ("p_ctr", "p_cvr", "expected_value")),
        pa.field("order", pa.list_(pa.int32()), nullable=False),
        *(pa.field(name, pa.list_(pa.float32()), nullable=False) for name in NO_HISTORY_COLUMNS),
        pa.field("shadow_model_version", pa.int64(), nullable=False),
        *(pa.field(name, pa.list_(pa.float32()), nullable=False) for name in SHADOW_SCORE_COLUMNS),
    ],
    metadata={b"adrank.schema": SCHEMA_TAG},
)
V2_SCHEMA = pa.schema([f for f in REQUEST_LOG_SCHEMA if f.name not in SHADOW_COLUMNS],
                      metadata={b"adrank.schema": V2_TAG})
V1_SCHEMA = pa.schema([f for f in V2_SCHEMA if f.name not in NO_HISTORY_COLUMNS],
                      metadata={b"adrank.schema": V1_TAG})


class RequestLogError(ValueError):
    """A record or a log file does not fit the request-log schema (the message names the field)."""


@dataclass(slots=True, kw_only=True)
class RequestRecord:
    """One scored request. Candidate fields are arrays (or sequences) of one length N, in request order.

    Deliberately not validated at construction: the serving path builds one per request and hands it to
    a sink that must cost microseconds; `check()` runs on the sink's writer thread instead. The sink
    takes ownership: do not modify the arrays after offering the record.
    """

    request_id: str
    request_time_ms: int
    user_id: int
    ad_id: Sequence[int] | np.ndarray
    advertiser_id: Sequence[int] | np.ndarray
    campaign_id: Sequence[int] | np.ndarray
    category: Sequence[int] | np.ndarray
    bid: Sequence[float] | np.ndarray
    p_ctr: Sequence[float] | np.ndarray
    p_cvr: Sequence[float] | np.ndarray
    expected_value: Sequence[float] | np.ndarray
    order: Sequence[int] | np.ndarray
    placement: int = 0
    device: int = 0
    hour: int = 0
    user_segment: int = 0
    recent_categories: Sequence[int] | np.ndarray = ()
    dense_features: np.ndarray | None = None  # [N, E] float32; None = no dense features
    model_name: str = ""
    model_version: int = 0
    rollout_arm: str = ""
    backend: str = ""
    fm_version: str = ""
    snapshot_id: str = ""
    flags: Sequence[str] = ()
    stage_us: Mapping[str, int] = field(default_factory=dict)
    logged_at_ms: int = 0
    p_ctr_no_history: Sequence[float] | np.ndarray = ()  # empty, or one per candidate
    p_cvr_no_history: Sequence[float] | np.ndarray = ()
    shadow_model_version: int = 0  # the shadow version that also scored this request; 0 = none
    p_ctr_shadow: Sequence[float] | np.ndarray = ()  # empty, or one per candidate
    p_cvr_shadow: Sequence[float] | np.ndarray = ()

    @property
    def n_candidates(self) -> int:
        return len(self.ad_id)

    def check(self) -> None:
        """Raises RequestLogError naming the first field that does not fit (lengths, index ranges)."""
        if not isinstance(self.request_id, str) or not self.request_id:
            raise RequestLogError("request_id must be a non-empty string")
        n = len(self.ad_id)
        for name in CANDIDATE_COLUMNS:
            if len(getattr(self, name)) != n:
                raise RequestLogError(f"{name} has {len(getattr(self, name))} values for {n} candidates")
        if self.dense_features is not None and (np.ndim(self.dense_features) != 2 or len(self.dense_features) != n):
            raise RequestLogError(f"dense_features has shape {np.shape(self.dense_features)}, expected ({n}, E)")
        for name in (*NO_HISTORY_COLUMNS, *SHADOW_SCORE_COLUMNS):
            if len(getattr(self, name)) not in (0, n):
                raise RequestLogError(f"{name} has {len(getattr(self, name))} values for {n} candidates (0 or {n})")
        order = np.asarray(self.order, dtype=np.int64)
        if order.size and (order.min() < 0 or order.max() >= n or len(np.unique(order)) != order.size):
            raise RequestLogError(f"order must hold distinct request indices in [0, {n})")
        if len(self.p_ctr_shadow) != len(self.p_cvr_shadow) or (len(self.p_ctr_shadow) > 0) != (
                int(self.shadow_model_version) > 0):
            raise RequestLogError("shadow_model_version, p_ctr_shadow and p_cvr_shadow must be given together")
        for name in ("request_time_ms", "user_id", "model_version", "shadow_model_version"):
            if int(getattr(self, name)) < 0:
                raise RequestLogError(f"{name} must be >= 0, got {getattr(self, name)}")


def _list_column(values: list[np.ndarray], dtype: np.dtype, value_type: pa.DataType) -> pa.ListArray:
    """One list per record from per-record arrays: a single concatenation, no per-element Python work."""
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum([len(v) for v in values], out=offsets[1:])
    flat = np.concatenate(values).astype(dtype, copy=False) if values else np.empty(0, dtype)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=value_type))


def records_to_table(records: Sequence[RequestRecord]) -> pa.Table:
    """Rows for `records`, in REQUEST_LOG_SCHEMA. Records are assumed checked (`RequestRecord.check`)."""
    cols: dict[str, pa.Array] = {}
    for name, t in (("request_id", pa.string()), ("request_time_ms", pa.int64()), ("logged_at_ms", pa.int64()),
                    ("user_id", pa.int64()), ("placement", pa.int32()), ("device", pa.int32()), ("hour", pa.int32()),
                    ("user_segment", pa.int32()), ("model_name", pa.string()), ("model_version", pa.int64()),
                    ("rollout_arm", pa.string()), ("backend", pa.string()), ("fm_version", pa.string()),
                    ("snapshot_id", pa.string()), ("shadow_model_version", pa.int64())):
        cols[name] = pa.array([getattr(r, name) for r in records], type=t)
    cols["recent_categories"] = _list_column([np.asarray(r.recent_categories, np.int32) for r in records],
                                             np.dtype(np.int32), pa.int32())
    cols["order"] = _list_column([np.asarray(r.order, np.int32) for r in records], np.dtype(np.int32), pa.int32())
    for name, dtype in CANDIDATE_COLUMNS.items():
        cols[name] = _list_column([np.asarray(getattr(r, name), dtype) for r in records], dtype,
                                  pa.from_numpy_dtype(dtype))
    for name in (*NO_HISTORY_COLUMNS, *SHADOW_SCORE_COLUMNS):
        cols[name] = _list_column([np.asarray(getattr(r, name), np.float32) for r in records],
                                  np.dtype(np.float32), pa.float32())
    cols["dense_features"] = _dense_column(records)
    cols["flags"] = pa.array([list(r.flags) for r in records], type=pa.list_(pa.string()))
    key_offsets = np.zeros(len(records) + 1, dtype=np.int32)
    np.cumsum([len(r.stage_us) for r in records], out=key_offsets[1:])
    keys = [k for r in records for k in r.stage_us]
    items = [int(v) for r in records for v in r.stage_us.values()]
    cols["stage_us"] = pa.MapArray.from_arrays(pa.array(key_offsets), pa.array(keys, pa.string()),
                                               pa.array(items, pa.int64()))
    return pa.Table.from_arrays([cols[f.name] for f in REQUEST_LOG_SCHEMA], schema=REQUEST_LOG_SCHEMA)


def _dense_column(records: Sequence[RequestRecord]) -> pa.ListArray:
    """list<list<float32>>: per record, one (possibly empty) list per candidate."""
    per_candidate: list[np.ndarray] = []
    widths: list[np.ndarray] = []
    for r in records:
        n = r.n_candidates
        if r.dense_features is None:
            widths.append(np.zeros(n, dtype=np.int32))
        else:
            d = np.asarray(r.dense_features, dtype=np.float32)
            widths.append(np.full(n, d.shape[1], dtype=np.int32))
            per_candidate.append(d.reshape(-1))
    width = np.concatenate(widths) if widths else np.empty(0, np.int32)
    inner_offsets = np.zeros(len(width) + 1, dtype=np.int32)
    np.cumsum(width, out=inner_offsets[1:])
    flat = np.concatenate(per_candidate) if per_candidate else np.empty(0, np.float32)
    inner = pa.ListArray.from_arrays(pa.array(inner_offsets), pa.array(flat, type=pa.float32()))
    outer_offsets = np.zeros(len(records) + 1, dtype=np.int32)
    np.cumsum([r.n_candidates for r in records], out=outer_offsets[1:])
    return pa.ListArray.from_arrays(pa.array(outer_offsets), inner)


def request_log_files(folder: str | Path) -> list[Path]:
    """The complete log files directly in `folder`, in name order (= the order they were written).

    Temp files of a writer in progress (or of one that crashed) never end in `.parquet`, so they are
    never listed. Links that lead outside the folder are refused: a log folder reads only its own files.
    """
    root = Path(folder).resolve()
    if not root.is_dir():
        raise RequestLogError(f"request log folder {folder} does not exist")
    files = []
    for p in sorted(root.glob("*.parquet")):
        real = p.resolve()
        if real.parent != root or not real.is_file():
            raise RequestLogError(f"{p.name} points outside the request log folder {root}")
        files.append(real)
    return files


def check_schema(schema: pa.Schema, where: str) -> bytes:
    """The file's layout tag (SCHEMA_TAG, V2_TAG or V1_TAG); RequestLogError when it is none of them or its
    columns differ."""
    tag = (schema.metadata or {}).get(b"adrank.schema")
    expected = {SCHEMA_TAG: REQUEST_LOG_SCHEMA, V2_TAG: V2_SCHEMA, V1_TAG: V1_SCHEMA}.get(tag)  # type: ignore
    if expected is None:
        raise RequestLogError(f"{where}: schema tag {tag!r}, expected {SCHEMA_TAG!r} (not a request log?)")
    if not schema.equals(expected, check_metadata=False):
        raise RequestLogError(f"{where}: columns differ from the request-log schema")
    return tag  # type: ignore[return-value]


def _upgrade(table: pa.Table) -> pa.Table:
    """An older layout's table with the columns it lacks added empty (lists) or 0 (shadow_model_version)."""
    empty = pa.ListArray.from_arrays(pa.array(np.zeros(table.num_rows + 1, np.int32)), pa.array([], pa.float32()))
    for f in REQUEST_LOG_SCHEMA:
        if f.name not in table.column_names:
            column = pa.array(np.zeros(table.num_rows, np.int64)) if f.name == "shadow_model_version" else empty
            table = table.append_column(f, column)
    return table.select([f.name for f in REQUEST_LOG_SCHEMA]).replace_schema_metadata(REQUEST_LOG_SCHEMA.metadata)


def read_request_log(folder: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """Every complete file in `folder` as one table (empty, with the schema, when there is none)."""
    tables = []
    for path in request_log_files(folder):
        if check_schema(pq.read_schema(path), path.name) != SCHEMA_TAG:
            table = _upgrade(pq.read_table(path))
            tables.append(table.select(list(columns)) if columns else table)
        else:
            tables.append(pq.read_table(path, columns=list(columns) if columns else None))
    if not tables:
        empty = REQUEST_LOG_SCHEMA.empty_table()
        return empty.select(list(columns)) if columns else empty
    return pa.concat_tables(tables)
