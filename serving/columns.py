"""The columnar wire format's arrays (`adrank.v1.Column`): numpy in, numpy out, for both sides.

A Column is `length` little-endian values of a declared `dtype` in one `bytes` block. The server's
decode stage reads request columns with `column_view` (a zero-copy `np.frombuffer`), its encode stage
writes response columns with `fill_column`; clients use the same two functions the other way round
(`serving.client.to_columns`, `ranked_arrays`). docs/benchmarks.md has the measurement behind bytes
blocks rather than packed repeated fields.

Usage::

    fill_column(req.candidates.bid, bids, ranking_pb2.DTYPE_FLOAT64)
    bids = column_view(req.candidates.bid, "candidates.bid", ranking_pb2.DTYPE_FLOAT64)
"""

from __future__ import annotations

import functools

import numpy as np

from protos.adrank.v1 import ranking_pb2
from serving.errors import InvalidRequest

DTYPES: dict[int, np.dtype] = {ranking_pb2.DTYPE_INT32: np.dtype("<i4"), ranking_pb2.DTYPE_INT64: np.dtype("<i8"),
                               ranking_pb2.DTYPE_FLOAT32: np.dtype("<f4"), ranking_pb2.DTYPE_FLOAT64: np.dtype("<f8")}
"""The numpy dtype of each wire DType (little-endian whatever the host)."""

CANDIDATE_COLUMNS: tuple[tuple[str, int], ...] = (
    ("ad_id", ranking_pb2.DTYPE_INT64), ("advertiser_id", ranking_pb2.DTYPE_INT64),
    ("campaign_id", ranking_pb2.DTYPE_INT64), ("category", ranking_pb2.DTYPE_INT32),
    ("bid", ranking_pb2.DTYPE_FLOAT64))
"""Each request candidate column and the one dtype it accepts (the row field's type)."""

RANKED_COLUMNS: tuple[tuple[str, int], ...] = (
    ("ad_id", ranking_pb2.DTYPE_INT64), ("request_index", ranking_pb2.DTYPE_INT32),
    ("p_ctr", ranking_pb2.DTYPE_FLOAT32), ("p_cvr", ranking_pb2.DTYPE_FLOAT32),
    ("expected_value", ranking_pb2.DTYPE_FLOAT64))
"""Each response column (best first) and its dtype."""


def dtype_name(dtype: int) -> str:
    try:
        return ranking_pb2.DType.Name(dtype)
    except ValueError:
        return f"unknown dtype {dtype}"


def fill_column(column: ranking_pb2.Column, values: np.ndarray, dtype: int) -> None:
    """Writes `values` into `column` as `dtype`, little-endian."""
    array = np.ascontiguousarray(values, dtype=DTYPES[dtype])
    column.dtype, column.length, column.data = dtype, array.size, array.tobytes()


@functools.lru_cache(maxsize=4096)
def _varint(value: int) -> bytes:
    """`value` (>= 0) as a protobuf varint; cached, since requests repeat the same few lengths."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_COLUMN_FIELDS = ranking_pb2.Column.DESCRIPTOR.fields_by_name
_LENGTH_TAG = _varint(_COLUMN_FIELDS["length"].number << 3)  # wire type 0: varint
_DATA_TAG = _varint(_COLUMN_FIELDS["data"].number << 3 | 2)  # wire type 2: length-delimited


@functools.lru_cache(maxsize=64)
def _column_field(message_type: type, name: str, dtype: int) -> tuple[bytes, bytes, np.dtype]:
    """(the field's tag in `message_type`, the Column's dtype field, the numpy dtype) for one column."""
    number = message_type.DESCRIPTOR.fields_by_name[name].number
    return (_varint(number << 3 | 2), _varint(_COLUMN_FIELDS["dtype"].number << 3) + _varint(dtype),
            DTYPES[dtype])


def columns_message_bytes(message_type: type, columns: tuple[tuple[str, int, np.ndarray], ...]) -> bytes:
    """The wire bytes of a message of Column fields (`message_type`, e.g. RankedColumns) holding each
    `(field, dtype, values)`: exactly what filling each field with `fill_column` and serializing gives
    (tests/unit/serving/test_columns.py), built as one bytes join, with the field numbers read from the
    message's descriptor. Parsing it into a response (`MergeFromString`, one copy per column) costs
    less than three attribute writes per column."""
    parts = []
    for name, dtype, values in columns:
        tag, dtype_field, np_dtype = _column_field(message_type, name, dtype)
        array = values if values.dtype == np_dtype and values.flags.c_contiguous else \
            np.ascontiguousarray(values, dtype=np_dtype)
        if array.size:  # proto3 leaves zero values out
            data = array.tobytes()
            head = _LENGTH_TAG + _varint(array.size) + _DATA_TAG + _varint(len(data))
            parts += (tag, _varint(len(dtype_field) + len(head) + len(data)), dtype_field, head, data)
        else:
            parts += (tag, _varint(len(dtype_field)), dtype_field)
    return b"".join(parts)


def column_view(column: ranking_pb2.Column, field: str, dtype: int) -> np.ndarray:
    """`column` as a read-only numpy view of its bytes; InvalidRequest naming `field` when its dtype
    is not `dtype` or its byte count is not length × the dtype's size."""
    if column.dtype != dtype:
        raise InvalidRequest(f"{field}: dtype must be {dtype_name(dtype)}, got {dtype_name(column.dtype)}")
    np_dtype = DTYPES[dtype]
    data = column.data
    if len(data) != column.length * np_dtype.itemsize:
        raise InvalidRequest(f"{field}: {len(data)} bytes of data do not hold length {column.length} × "
                             f"{np_dtype.itemsize} bytes ({dtype_name(dtype)})")
    return np.frombuffer(data, dtype=np_dtype)


def ranked_arrays(response: ranking_pb2.ScoreColumnsResponse) -> dict[str, np.ndarray]:
    """A ScoreColumns response's ranking as numpy views, best first: ad_id, request_index, p_ctr, p_cvr,
    expected_value. InvalidRequest when a column does not hold what its dtype and length say."""
    return {name: column_view(getattr(response.candidates, name), f"candidates.{name}", dtype)
            for name, dtype in RANKED_COLUMNS}
