"""Two ways to carry a column of candidates in protobuf, measured side by side in one run:

* packed repeated scalar fields (`repeated int64 ad_id = 1;` — proto3 packs them on the wire), and
* `bytes` blocks with a declared dtype and length (what `adrank.v1.Column` is).

For 200 candidates × 5 columns it times the client's build (numpy arrays → message → bytes), the
server's parse (bytes → message) and its read into numpy, the part the server pays per request. The
packed messages are built from descriptors at run time, so no second .proto is compiled.

    python -m loadtests.bench_wire [--candidates 200] [--n 2000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from loadtests.bench_serve import timed_us
from protos.adrank.v1 import ranking_pb2

COLUMNS = (("ad_id", "<i8", descriptor_pb2.FieldDescriptorProto.TYPE_INT64, ranking_pb2.DTYPE_INT64),
           ("advertiser_id", "<i8", descriptor_pb2.FieldDescriptorProto.TYPE_INT64, ranking_pb2.DTYPE_INT64),
           ("campaign_id", "<i8", descriptor_pb2.FieldDescriptorProto.TYPE_INT64, ranking_pb2.DTYPE_INT64),
           ("category", "<i4", descriptor_pb2.FieldDescriptorProto.TYPE_INT32, ranking_pb2.DTYPE_INT32),
           ("bid", "<f8", descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE, ranking_pb2.DTYPE_FLOAT64))


def packed_message_class():
    """A message with one packed repeated field per column (the alternative to Column blocks)."""
    fdp = descriptor_pb2.FileDescriptorProto(name="bench_wire_packed.proto", package="benchwire", syntax="proto3")
    msg = fdp.message_type.add(name="PackedCandidates")
    for i, (name, _, ftype, _) in enumerate(COLUMNS, start=1):
        msg.field.add(name=name, number=i, type=ftype, label=descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("benchwire.PackedCandidates"))


def _us(fn, n: int) -> float:
    """Median µs per call."""
    return float(np.median(timed_us(fn, n, warmup=min(n, 50))))


def measure(candidates: int = 200, n: int = 2000, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    arrays = {name: (rng.uniform(0, 10, candidates) if dt == "<f8" else rng.integers(0, 2**30, candidates)
                     ).astype(dt) for name, dt, _, _ in COLUMNS}
    packed_cls = packed_message_class()

    def build_packed() -> bytes:
        m = packed_cls()
        for name, _, _, _ in COLUMNS:
            getattr(m, name).extend(arrays[name].tolist())
        return m.SerializeToString()

    def build_blocks() -> bytes:
        m = ranking_pb2.CandidateColumns()
        for name, _, _, dtype in COLUMNS:
            col = getattr(m, name)
            col.dtype, col.length, col.data = dtype, candidates, arrays[name].tobytes()
        return m.SerializeToString()

    packed_wire, blocks_wire = build_packed(), build_blocks()

    def read_packed() -> dict:
        m = packed_cls.FromString(packed_wire)
        return {name: np.array(getattr(m, name), dtype=dt) for name, dt, _, _ in COLUMNS}

    def read_blocks() -> dict:
        m = ranking_pb2.CandidateColumns.FromString(blocks_wire)
        return {name: np.frombuffer(getattr(m, name).data, dtype=dt) for name, dt, _, _ in COLUMNS}

    for got in (read_packed(), read_blocks()):  # both carry the same values
        assert all(np.array_equal(got[k], arrays[k]) for k in arrays)
    out = {"candidates": candidates, "calls": n,
           "packed_repeated": {"bytes": len(packed_wire), "build_us": _us(build_packed, n),
                               "parse_us": _us(lambda: packed_cls.FromString(packed_wire), n),
                               "parse_to_numpy_us": _us(read_packed, n)},
           "bytes_blocks": {"bytes": len(blocks_wire), "build_us": _us(build_blocks, n),
                            "parse_us": _us(lambda: ranking_pb2.CandidateColumns.FromString(blocks_wire), n),
                            "parse_to_numpy_us": _us(read_blocks, n)}}
    return out


def markdown(r: dict) -> str:
    lines = [f"| {r['candidates']} candidates × 5 columns (median of {r['calls']:,}) | wire bytes | client build µs "
             "| server parse µs | parse + numpy µs |", "|---|---|---|---|---|"]
    for key, label in (("packed_repeated", "packed repeated fields"), ("bytes_blocks", "`bytes` blocks (Column)")):
        x = r[key]
        lines.append(f"| {label} | {x['bytes']:,} | {x['build_us']:.1f} | {x['parse_us']:.1f} | "
                     f"{x['parse_to_numpy_us']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--candidates", type=int, default=200)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    r = measure(a.candidates, a.n)
    print(markdown(r))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
