"""A request record as one compact binary frame, for the pipe between the sink and its writer process.

Why not pickle, JSON or Arrow IPC: the sender is a thread of the serving process, and every
microsecond it runs Python it holds the interpreter lock the event loop needs. A frame is the record's
arrays as raw bytes (one `tobytes` each, no conversion when the dtype already matches), its integers in
one `struct`, and its strings (ids, flags, stage names) as UTF-8 with their lengths: about 6 µs of CPU
for a 50-candidate record (a JSON header alone took 3.5). The receiver decodes it with
`numpy.frombuffer`, and no code is ever run from the bytes (unlike unpickling). Arrow IPC would do
the column building — the expensive part — on the sender again.

Layout (little endian)::

    kind: 1 byte (b"R" record, b"F" flush, b"C" close) | body length: uint32 | body
    record body: n_flags, n_stages: 2 × uint32 | element count per array: 16 × uint32 |
                 byte length per string: uint32 each | strings (7 fields, flags, stage names) |
                 11 × int64 (time, ids, versions, dense shape or -1) | arrays (15 columns, stage µs)
    flush body:  uint64 ticket

The receiver checks the record (`RequestRecord.check`) as the in-process writer did; a frame that does
not decode is counted as invalid.

Usage::

    frame = encode_record(record)            # bytes; ValueError/TypeError/OverflowError when unencodable
    kind, body, end = next_frame(buffer, 0)  # None while incomplete
    record = decode_record(body)
"""

from __future__ import annotations

import struct

import numpy as np

from models.data.requestlog import RequestRecord

RECORD, FLUSH, CLOSE = b"R", b"F", b"C"
_PREFIX = struct.Struct("<cI")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
MAX_FRAME_BYTES = 256 << 20
"""A larger length is a corrupt stream, not a record (the server bounds candidates far below this)."""

_INTS = ("request_time_ms", "logged_at_ms", "user_id", "placement", "device", "hour", "user_segment",
         "model_version", "shadow_model_version", "dense_rows", "dense_cols")
_INT_STRUCT = struct.Struct(f"<{len(_INTS)}q")
_STRINGS = ("request_id", "model_name", "rollout_arm", "backend", "fm_version", "snapshot_id", "shadow_snapshot_id")
_ARRAYS: tuple[tuple[str, np.dtype], ...] = tuple((name, np.dtype(t)) for name, t in (
    ("recent_categories", np.int32), ("ad_id", np.int64), ("advertiser_id", np.int64), ("campaign_id", np.int64),
    ("category", np.int32), ("bid", np.float64), ("p_ctr", np.float32), ("p_cvr", np.float32),
    ("expected_value", np.float64), ("order", np.int32), ("p_ctr_no_history", np.float32),
    ("p_cvr_no_history", np.float32), ("p_ctr_shadow", np.float32), ("p_cvr_shadow", np.float32),
    ("dense_features", np.float32)))
_STAGE_DTYPE = np.dtype(np.int64)
_EMPTY = {dtype: np.empty(0, dtype) for _, dtype in _ARRAYS}
_COUNTS = struct.Struct(f"<II{len(_ARRAYS) + 1}I")  # flags, stages, then one element count per array + stage values


def _raw(value: object, dtype: np.dtype) -> np.ndarray:
    """`value` as a C-contiguous array of `dtype` (no copy when it already is one, the serving path's case)."""
    if type(value) is np.ndarray and value.dtype == dtype and value.flags.c_contiguous:
        return value
    if type(value) is tuple and not value:  # the empty default of the optional score columns
        return _EMPTY[dtype]
    return np.ascontiguousarray(value, dtype=dtype)


def encode_record(record: RequestRecord, logged_at_ms: int = 0) -> bytes:
    """The frame of `record` (`logged_at_ms` fills the record's when it has none). Raises (TypeError,
    ValueError, AttributeError, OverflowError, struct.error) for a record that cannot be framed."""
    arrays = [_raw(getattr(record, name), dtype) for name, dtype in _ARRAYS[:-1]]
    dense = record.dense_features
    if dense is None:
        rows = cols = -1
        arrays.append(_raw((), np.dtype(np.float32)))
    else:
        dense = _raw(dense, np.dtype(np.float32))
        if dense.ndim != 2:
            raise ValueError(f"dense_features has shape {dense.shape}, expected (N, E)")
        rows, cols = dense.shape
        arrays.append(dense)
    stages = record.stage_us
    arrays.append(np.fromiter(stages.values(), _STAGE_DTYPE, len(stages)))
    texts = [getattr(record, name).encode() for name in _STRINGS]
    texts += [f.encode() for f in record.flags]
    n_flags = len(texts) - len(_STRINGS)
    texts += [k.encode() for k in stages]
    ints = [record.request_time_ms, record.logged_at_ms or logged_at_ms, record.user_id, record.placement,
            record.device, record.hour, record.user_segment, record.model_version, record.shadow_model_version,
            rows, cols]
    body = b"".join((_COUNTS.pack(n_flags, len(stages), *(a.size for a in arrays)),
                     struct.pack(f"<{len(texts)}I", *map(len, texts)), *texts,
                     _INT_STRUCT.pack(*map(int, ints)), *(a.tobytes() for a in arrays)))
    return _PREFIX.pack(RECORD, len(body)) + body


def control_frame(kind: bytes, ticket: int = 0) -> bytes:
    body = _U64.pack(ticket) if kind == FLUSH else b""
    return _PREFIX.pack(kind, len(body)) + body


def next_frame(buffer: bytes | bytearray, start: int) -> tuple[bytes, bytes, int] | None:
    """(kind, body, end) of the frame at `start`, or None while it is incomplete. ValueError on a length
    no frame can have (the stream is corrupt and cannot be resynchronised)."""
    if len(buffer) - start < _PREFIX.size:
        return None
    kind, length = _PREFIX.unpack_from(buffer, start)
    if length > MAX_FRAME_BYTES or kind not in (RECORD, FLUSH, CLOSE):
        raise ValueError(f"request log frame of kind {kind!r} and {length} bytes: the stream is corrupt")
    end = start + _PREFIX.size + length
    if len(buffer) < end:
        return None
    return kind, bytes(buffer[start + _PREFIX.size:end]), end  # a copy: the caller may then trim `buffer`


def flush_ticket(body: bytes) -> int:
    return _U64.unpack(body)[0]


def decode_record(body: bytes) -> RequestRecord:
    """The record of a frame body (its arrays are read-only views into it); ValueError (or struct.error) when
    the body is malformed."""
    n_flags, n_stages, *counts = _COUNTS.unpack_from(body, 0)
    at = _COUNTS.size
    n_texts = len(_STRINGS) + n_flags + n_stages
    lengths = np.frombuffer(body, np.uint32, n_texts, at).tolist()
    at += 4 * n_texts
    texts = []
    for n in lengths:
        texts.append(body[at:at + n].decode())
        at += n
    ints = dict(zip(_INTS, _INT_STRUCT.unpack_from(body, at), strict=True))
    at += _INT_STRUCT.size
    values: dict[str, object] = dict(zip(_STRINGS, texts, strict=False))
    for (name, dtype), count in zip((*_ARRAYS, ("stage_us", _STAGE_DTYPE)), counts, strict=True):
        nbytes = count * dtype.itemsize
        if at + nbytes > len(body):
            raise ValueError(f"request log frame: {name} runs past the end of the frame")
        values[name] = np.frombuffer(body, dtype=dtype, count=count, offset=at)
        at += nbytes
    if at != len(body):
        raise ValueError("request log frame: bytes left after the last array")
    rows, cols = ints.pop("dense_rows"), ints.pop("dense_cols")
    values["dense_features"] = None if rows < 0 else values["dense_features"].reshape(rows, cols)  # type: ignore
    stage_values = values.pop("stage_us").tolist()  # type: ignore[union-attr]
    values["flags"] = texts[len(_STRINGS):len(_STRINGS) + n_flags]
    values["stage_us"] = dict(zip(texts[len(_STRINGS) + n_flags:], stage_values, strict=True))
    return RequestRecord(**ints, **values)  # type: ignore[arg-type]
