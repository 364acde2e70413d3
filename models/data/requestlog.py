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

* `shadow_snapshot_id`: the embedding snapshot that shadow's FM history came from (its own history lookup,
  or live's when the shadow reuses live's tensors); "" when it read none.

Older files are read as if the columns they lack were empty: `requestlog/1` (without the no-history and
shadow columns), `requestlog/2` (without the shadow columns) and `requestlog/3` (without
`shadow_snapshot_id`).

Usage::

    record = RequestRecord(request_id="r1", request_time_ms=t, user_id=7, ad_id=[3, 9], ...)
    table = records_to_table([record])
    table = read_request_log("runs/requestlog")
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter, methodcaller
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_TAG = b"requestlog/4"
"""Stored in every file's schema metadata under b"adrank.schema"; readers refuse other tags (but V1_TAG to
V3_TAG)."""
V1_TAG = b"requestlog/1"
"""The first layout: REQUEST_LOG_SCHEMA without the no-history and shadow columns; readers upgrade it."""
V2_TAG = b"requestlog/2"
"""The second layout: without the shadow columns; readers upgrade it."""
V3_TAG = b"requestlog/3"
"""The third layout: without `shadow_snapshot_id`; readers upgrade it."""

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
SHADOW_COLUMNS = ("shadow_model_version", *SHADOW_SCORE_COLUMNS, "shadow_snapshot_id")

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
        pa.field("shadow_snapshot_id", pa.string(), nullable=False),
    ],
    metadata={b"adrank.schema": SCHEMA_TAG},
)
V3_SCHEMA = pa.schema([f for f in REQUEST_LOG_SCHEMA if f.name != "shadow_snapshot_id"],
                      metadata={b"adrank.schema": V3_TAG})
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
    shadow_snapshot_id: str = ""  # the embedding snapshot the shadow's history came from ("" = none read)

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


_INT64_COLUMNS = ("request_time_ms", "user_id", "model_version", "shadow_model_version")
_INT32_COLUMNS = ("placement", "device", "hour", "user_segment")
_STRING_COLUMNS = ("request_id", "model_name", "rollout_arm", "backend", "fm_version", "snapshot_id",
                   "shadow_snapshot_id")
_FLOAT32_OPTIONAL = (*NO_HISTORY_COLUMNS, *SHADOW_SCORE_COLUMNS)


def _values(records: Sequence[RequestRecord], name: str) -> list:
    """One attribute of every record: a C-level `map`, no Python bytecode per record."""
    return list(map(attrgetter(name), records))


def _lengths(values: list) -> np.ndarray:
    return np.fromiter(map(len, values), np.int64, len(values))


def _offsets(lengths: np.ndarray) -> np.ndarray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def _flat(values: list, dtype: np.dtype) -> np.ndarray:
    """The per-record arrays end to end, cast as `np.asarray(v, dtype)` would (a no-op for the serving path's
    arrays): one `np.concatenate`, whose loop over the records runs in C."""
    if not values:
        return np.empty(0, dtype)
    return np.concatenate(values, dtype=dtype, casting="unsafe")


def _list_array(values: list, dtype: np.dtype) -> pa.ListArray:
    lengths = _lengths(values)
    flat = _flat(values, dtype) if lengths.any() else np.empty(0, dtype)  # e.g. no shadow scores in the chunk
    return pa.ListArray.from_arrays(pa.array(_offsets(lengths)), pa.array(flat, type=pa.from_numpy_dtype(dtype)))


def _no_pause() -> None:
    pass


def check_records(records: Sequence[RequestRecord], pause: Callable[[], None] = _no_pause) -> np.ndarray:
    """`RequestRecord.check` for many records at once: a bool mask, True where `check` would pass.

    Why: the writer checks every record it writes; one `check` is ~20 µs of Python, which for a batch holds
    the interpreter lock the serving loop needs. Here every rule is an array comparison over the batch
    (lengths from a C-level `map(len, …)`, the `order` values of all records in one array). Raises
    (TypeError, ValueError, …) on values no batch rule can judge (a scalar where an array belongs, ids that
    do not fit int64): the caller then checks record by record with `check`, which names the field.
    `pause` is called between two rules (each one array operation over the batch): the writer thread hands
    the interpreter lock over there.
    """
    k = len(records)
    if not k:
        return np.zeros(0, dtype=bool)
    ok = np.fromiter((type(x) is str and x != "" for x in _values(records, "request_id")), bool, k)
    n = _lengths(_values(records, "ad_id"))
    for name in CANDIDATE_COLUMNS:
        ok &= _lengths(_values(records, name)) == n
        pause()
    dense = _values(records, "dense_features")
    if any(d is not None for d in dense):
        fits = (d is None or (np.ndim(d) == 2 and len(d) == m) for d, m in zip(dense, n.tolist(), strict=True))
        ok &= np.fromiter(fits, bool, k)
    lengths = {name: _lengths(_values(records, name)) for name in _FLOAT32_OPTIONAL}
    for name in _FLOAT32_OPTIONAL:
        ok &= (lengths[name] == 0) | (lengths[name] == n)
    pause()
    ints = {name: np.fromiter(map(int, _values(records, name)), np.int64, k) for name in _INT64_COLUMNS}
    for values in ints.values():
        ok &= values >= 0
    shadow_n = lengths["p_ctr_shadow"]
    ok &= (shadow_n == lengths["p_cvr_shadow"]) & ((shadow_n > 0) == (ints["shadow_model_version"] > 0))
    pause()
    orders = _values(records, "order")
    order_n = _lengths(orders)
    if order_n.any():
        values = _flat(orders, np.dtype(np.int64))
        owner = np.repeat(np.arange(k), order_n)
        bad = (values < 0) | (values >= n[owner])
        pause()
        sort = np.lexsort((values, owner))  # by record, then value: a repeat within a record is adjacent
        repeat = (values[sort][1:] == values[sort][:-1]) & (owner[sort][1:] == owner[sort][:-1])
        bad_records = np.zeros(k, dtype=bool)
        bad_records[owner[bad]] = True
        bad_records[owner[sort][1:][repeat]] = True
        ok &= ~bad_records
    return ok


def records_to_batch(records: Sequence[RequestRecord], logged_at_ms: int = 0,
                     pause: Callable[[], None] = _no_pause) -> pa.RecordBatch:
    """Rows for `records` (assumed checked) as one RecordBatch in REQUEST_LOG_SCHEMA; `logged_at_ms` fills
    the records whose own is 0.

    Why this shape: it runs on the writer thread of a serving process, where every stretch of Python holds
    the interpreter lock the event loop needs. Each column is built from the records' arrays in one step
    whose loop runs in C (`map(attrgetter(…))`, `np.concatenate`, `pa.array` of a flat list), never a Python
    loop over candidates and only one over records where a record may have dense features. The cost is a
    few µs per record, so a caller bounds how long one call holds the lock by the number of records it
    passes (`serving.requestlog.writer.CHUNK_ROWS`), and `pause` is called after each column (one C-level
    step of tens of µs for a chunk), where the writer thread hands the lock over. Raises TypeError /
    ValueError / OverflowError (or an Arrow error, which subclasses them) for values that do not fit their
    column.
    """
    k = len(records)
    cols: dict[str, pa.Array] = {}
    for names, t in ((_STRING_COLUMNS, pa.string()), (_INT64_COLUMNS, pa.int64()), (_INT32_COLUMNS, pa.int32())):
        for name in names:
            cols[name] = pa.array(_values(records, name), type=t)
            pause()
    logged = _values(records, "logged_at_ms")
    if logged_at_ms and not all(logged):
        logged = [t or logged_at_ms for t in logged]
    cols["logged_at_ms"] = pa.array(logged, type=pa.int64())
    cols["recent_categories"] = _list_array(_values(records, "recent_categories"), np.dtype(np.int32))
    pause()
    cols["order"] = _list_array(_values(records, "order"), np.dtype(np.int32))
    pause()
    for name, dtype in CANDIDATE_COLUMNS.items():
        cols[name] = _list_array(_values(records, name), dtype)
        pause()
    for name in _FLOAT32_OPTIONAL:
        cols[name] = _list_array(_values(records, name), np.dtype(np.float32))
    pause()
    n = _lengths(_values(records, "ad_id"))
    cols["dense_features"] = _dense_column(_values(records, "dense_features"), n)
    pause()
    flags = _values(records, "flags")
    cols["flags"] = pa.ListArray.from_arrays(pa.array(_offsets(_lengths(flags))),
                                             pa.array(list(chain.from_iterable(flags)), type=pa.string()))
    pause()
    stages = _values(records, "stage_us")
    n_stages = _lengths(stages)
    stage_values = np.fromiter(chain.from_iterable(map(methodcaller("values"), stages)), np.int64,
                               int(n_stages.sum()))
    pause()
    stage_keys = pa.array(list(chain.from_iterable(stages)), type=pa.string())
    pause()
    cols["stage_us"] = pa.MapArray.from_arrays(pa.array(_offsets(n_stages)), stage_keys,
                                               pa.array(stage_values, type=pa.int64()))
    batch = pa.RecordBatch.from_arrays([cols[f.name] for f in REQUEST_LOG_SCHEMA], schema=REQUEST_LOG_SCHEMA)
    if batch.num_rows != k:  # pragma: no cover - every column above has one entry per record
        raise ValueError(f"request log batch has {batch.num_rows} rows for {k} records")
    return batch


def records_to_table(records: Sequence[RequestRecord], logged_at_ms: int = 0) -> pa.Table:
    """Rows for `records`, in REQUEST_LOG_SCHEMA. Records are assumed checked (`RequestRecord.check`)."""
    return pa.Table.from_batches([records_to_batch(records, logged_at_ms)], schema=REQUEST_LOG_SCHEMA)


def _dense_column(dense: list, n: np.ndarray) -> pa.ListArray:
    """list<list<float32>>: per record, one (possibly empty) list per candidate."""
    present = [d for d in dense if d is not None]
    if present:
        width = np.fromiter((0 if d is None else np.shape(d)[1] for d in dense), np.int64, len(dense))
        inner_offsets = _offsets(np.repeat(width, n))
        flat = np.concatenate([np.asarray(d, dtype=np.float32).reshape(-1) for d in present])
    else:  # the serving path's usual case: no record has dense features
        inner_offsets, flat = np.zeros(int(n.sum()) + 1, np.int32), np.empty(0, np.float32)
    inner = pa.ListArray.from_arrays(pa.array(inner_offsets), pa.array(flat, type=pa.float32()))
    return pa.ListArray.from_arrays(pa.array(_offsets(n)), inner)


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
    """The file's layout tag (SCHEMA_TAG, V3_TAG, V2_TAG or V1_TAG); RequestLogError when it is none of them or
    its columns differ."""
    tag = (schema.metadata or {}).get(b"adrank.schema")
    expected = {SCHEMA_TAG: REQUEST_LOG_SCHEMA, V3_TAG: V3_SCHEMA, V2_TAG: V2_SCHEMA,
                V1_TAG: V1_SCHEMA}.get(tag)  # type: ignore
    if expected is None:
        raise RequestLogError(f"{where}: schema tag {tag!r}, expected {SCHEMA_TAG!r} (not a request log?)")
    if not schema.equals(expected, check_metadata=False):
        raise RequestLogError(f"{where}: columns differ from the request-log schema")
    return tag  # type: ignore[return-value]


def _upgrade(table: pa.Table) -> pa.Table:
    """An older layout's table with the columns it lacks added empty (lists, strings) or 0 (shadow_model_version)."""
    empty = pa.ListArray.from_arrays(pa.array(np.zeros(table.num_rows + 1, np.int32)), pa.array([], pa.float32()))
    for f in REQUEST_LOG_SCHEMA:
        if f.name not in table.column_names:
            column = (pa.array(np.zeros(table.num_rows, np.int64)) if f.name == "shadow_model_version"
                      else pa.repeat(pa.scalar("", pa.string()), table.num_rows) if f.name == "shadow_snapshot_id"
                      else empty)
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
