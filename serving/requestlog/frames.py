"""A request record as one compact binary frame, for the pipe between the sink and its writer process.

Why not pickle or Arrow IPC: the sender is a thread of the serving process, and every microsecond it
runs Python it holds the interpreter lock the event loop needs. A frame is the record's arrays as raw
bytes (one `tobytes` each), its integers in one `struct` and its few strings, flags and stage timings
in one small JSON header: about 10–20 µs for a 50-candidate record, and the receiver decodes it with
`numpy.frombuffer` (no code is ever run from the bytes, unlike unpickling). Arrow IPC would do the
column building — the expensive part — on the sender again.

Layout (little endian)::

    kind: 1 byte (b"R" record, b"F" flush, b"C" close) | body length: uint32 | body
    record body: header length uint32 | JSON header | 9 × int64 | 15 × uint32 element counts | array bytes
    flush body:  uint64 ticket

The receiver checks the record (`RequestRecord.check`) as the in-process writer did; a frame that does
not decode is counted as invalid.

Usage::

    frame = encode_record(record)            # bytes; ValueError/TypeError/OverflowError when unencodable
    kind, body, end = next_frame(buffer, 0)  # None while incomplete
    record = decode_record(body)
"""

from __future__ import annotations

import json
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
         "model_version", "shadow_model_version")
_INT_STRUCT = struct.Struct(f"<{len(_INTS)}q")
_STRINGS = ("request_id", "model_name", "rollout_arm", "backend", "fm_version", "snapshot_id")
_ARRAYS: tuple[tuple[str, np.dtype], ...] = tuple((name, np.dtype(t)) for name, t in (
    ("recent_categories", np.int32), ("ad_id", np.int64), ("advertiser_id", np.int64), ("campaign_id", np.int64),
    ("category", np.int32), ("bid", np.float64), ("p_ctr", np.float32), ("p_cvr", np.float32),
    ("expected_value", np.float64), ("order", np.int32), ("p_ctr_no_history", np.float32),
    ("p_cvr_no_history", np.float32), ("p_ctr_shadow", np.float32), ("p_cvr_shadow", np.float32),
    ("dense_features", np.float32)))
_COUNT_STRUCT = struct.Struct(f"<{len(_ARRAYS)}I")


def encode_record(record: RequestRecord, logged_at_ms: int = 0) -> bytes:
    """The frame of `record` (`logged_at_ms` fills the record's when it has none)."""
    arrays = []
    dense_shape = None
    for name, dtype in _ARRAYS:
        value = getattr(record, name)
        if name == "dense_features":
            if value is None:
                value = ()
            else:
                value = np.asarray(value, dtype=dtype)
                dense_shape = list(value.shape)
        arrays.append(np.ascontiguousarray(value, dtype=dtype).reshape(-1))
    header = json.dumps([[getattr(record, s) for s in _STRINGS], list(record.flags),
                         {str(k): int(v) for k, v in record.stage_us.items()}, dense_shape],
                        separators=(",", ":")).encode()
    ints = [int(getattr(record, name)) for name in _INTS]
    if not ints[1]:
        ints[1] = logged_at_ms
    body = b"".join((_U32.pack(len(header)), header, _INT_STRUCT.pack(*ints),
                     _COUNT_STRUCT.pack(*(a.size for a in arrays)), *(a.tobytes() for a in arrays)))
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
    (hlen,) = _U32.unpack_from(body, 0)
    at = _U32.size
    strings, flags, stage_us, dense_shape = json.loads(body[at:at + hlen])
    at += hlen
    ints = _INT_STRUCT.unpack_from(body, at)
    at += _INT_STRUCT.size
    counts = _COUNT_STRUCT.unpack_from(body, at)
    at += _COUNT_STRUCT.size
    values: dict[str, object] = dict(zip(_STRINGS, strings, strict=True))
    values.update(zip(_INTS, ints, strict=True))
    for (name, dtype), count in zip(_ARRAYS, counts, strict=True):
        nbytes = count * dtype.itemsize
        if at + nbytes > len(body):
            raise ValueError(f"request log frame: {name} runs past the end of the frame")
        values[name] = np.frombuffer(body, dtype=dtype, count=count, offset=at)
        at += nbytes
    if at != len(body):
        raise ValueError("request log frame: bytes left after the last array")
    dense = values.pop("dense_features")
    values["dense_features"] = None if dense_shape is None else dense.reshape(dense_shape)  # type: ignore[union-attr]
    return RequestRecord(flags=list(flags), stage_us=dict(stage_us), **values)  # type: ignore[arg-type]
