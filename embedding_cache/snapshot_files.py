"""On-disk snapshot format of the embedded store: raw little-endian arrays + a manifest with checksums.

    <root>/<fm_version>/CURRENT                      text: the current snapshot id (switched by rename)
    <root>/<fm_version>/snapshots/<snapshot_id>/
        manifest.json      fm_version, dim, codec params, row counts, per-file {dtype, shape, bytes, sha256},
                           and header_sha256 (a checksum of the manifest itself)
        user_ids.bin int64 [U] sorted   offsets.bin int64 [U+1]   ts.bin int64 [R]   event_ids.bin int64 [R]
        codes.bin uint8 [R, bytes_per_row]   scales.bin float32 [R] (int8 only)
        ad_ids.bin int64 [A] sorted   ad_codes.bin uint8 [A, bpr]   ad_scales.bin float32 [A]
        prior.bin float32 [dim]   pq_centroids.bin float32 (pq only)
    manifest.json also records `coverage`: source, event-time high-water mark and row count

Files are memory-mapped read-only, so every process on a host shares one copy through the page cache.
Writing goes to a temp directory, every file and the directory are fsynced, then the directory is renamed
into place; only then is CURRENT switched (see embedded.py), so a reader never sees a partial snapshot.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from pathlib import Path
from typing import Literal

import numpy as np

from embedding_cache.codecs import codec_from_manifest
from embedding_cache.errors import CorruptSnapshotError, FmVersionMismatchError
from embedding_cache.snapshot_data import SnapshotData

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# Files always checksummed in full when opening; any other file is, too, when smaller than this.
_INDEX_FILES = ("user_ids", "offsets", "ad_ids", "prior", "pq_centroids")
_FULL_CHECK_BELOW_BYTES = 16 << 20

Verify = Literal["header", "full"]


def _sha256(buf: memoryview | bytes) -> str:
    return hashlib.sha256(buf).hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _arrays(data: SnapshotData) -> dict[str, np.ndarray]:
    arrays = {
        "user_ids": data.user_ids, "offsets": data.offsets, "ts": data.ts, "codes": data.codes,
        "scales": data.scales, "ad_ids": data.ad_ids, "ad_codes": data.ad_codes, "ad_scales": data.ad_scales,
        "prior": data.prior, "event_ids": data.event_ids,
    }
    arrays.update(data.codec.state())
    return arrays


def _header_digest(manifest: dict) -> str:
    body = {k: v for k, v in manifest.items() if k != "header_sha256"}
    return _sha256(json.dumps(body, sort_keys=True).encode())


def write_snapshot_dir(data: SnapshotData, directory: Path) -> dict:
    """Write all arrays and the manifest into `directory` (must not exist), fsyncing each file."""
    directory.mkdir(parents=True)
    files = {}
    for name, arr in _arrays(data).items():
        arr = np.ascontiguousarray(arr)
        buf = memoryview(arr).cast("B") if arr.size else b""
        path = directory / f"{name}.bin"
        with open(path, "wb") as f:
            f.write(buf)
            f.flush()
            os.fsync(f.fileno())
        files[name] = {"file": path.name, "dtype": arr.dtype.str, "shape": list(arr.shape),
                       "bytes": int(arr.nbytes), "sha256": _sha256(buf)}
    manifest = {
        "format": FORMAT_VERSION, "fm_version": data.fm_version, "snapshot_id": data.snapshot_id,
        "created_ms": data.created_ms, "codec": data.codec.params(), "dim": data.dim,
        "n_users": int(len(data.user_ids)), "n_rows": data.n_rows, "n_ads": int(len(data.ad_ids)),
        "max_segment": data.max_segment, "coverage": data.coverage, "files": files,
    }
    manifest["header_sha256"] = _header_digest(manifest)
    with open(directory / MANIFEST, "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(directory)
    return manifest


def _map(path: Path, spec: dict) -> np.ndarray:
    dtype = np.dtype(spec["dtype"])
    shape = tuple(spec["shape"])
    if spec["bytes"] == 0:
        return np.zeros(shape, dtype)
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return np.frombuffer(mm, dtype=dtype).reshape(shape)  # the array keeps the mmap alive


def read_manifest(directory: Path) -> dict:
    """Parse and self-check a manifest; any problem is a CorruptSnapshotError naming the snapshot."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        ok = manifest.get("header_sha256") == _header_digest(manifest)
    except (OSError, ValueError, AttributeError) as exc:
        raise CorruptSnapshotError(f"snapshot {directory}: unreadable manifest ({exc})") from exc
    if not ok:
        raise CorruptSnapshotError(f"snapshot {directory}: manifest checksum mismatch (edited or damaged)")
    return manifest


def open_snapshot_dir(directory: Path, fm_version: str, verify: Verify = "header") -> SnapshotData:
    """Memory-map a snapshot after checking it against its manifest.

    `verify="header"` checks every file's size, the manifest's own checksum, the sha256 of the index files
    (ids, offsets, prior, codebooks) and of every file under 16 MiB, plus CSR invariants: milliseconds even
    for 1M users. `verify="full"` also hashes the large code and timestamp files (run it at deploy time).
    """
    manifest = read_manifest(directory)
    if manifest.get("fm_version") != fm_version:
        raise FmVersionMismatchError(
            f"snapshot {directory} holds fm_version {manifest.get('fm_version')!r}, expected {fm_version!r}")
    arrays = {}
    for name, spec in manifest["files"].items():
        path = directory / spec["file"]
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise CorruptSnapshotError(f"snapshot {directory}: missing file {spec['file']}") from exc
        if size != spec["bytes"]:
            raise CorruptSnapshotError(
                f"snapshot {directory}: {spec['file']} has {size} bytes, manifest says {spec['bytes']} (truncated?)")
        arr = _map(path, spec)
        if verify == "full" or name in _INDEX_FILES or spec["bytes"] < _FULL_CHECK_BELOW_BYTES:
            digest = _sha256(memoryview(arr).cast("B") if arr.size else b"")
            if digest != spec["sha256"]:
                raise CorruptSnapshotError(f"snapshot {directory}: {spec['file']} sha256 mismatch (corrupted)")
        arrays[name] = arr
    offsets, n_rows = arrays["offsets"], int(manifest["n_rows"])
    if len(offsets) != len(arrays["user_ids"]) + 1 or offsets[0] != 0 or offsets[-1] != n_rows:
        raise CorruptSnapshotError(f"snapshot {directory}: offsets do not match row count {n_rows}")
    codec = codec_from_manifest(manifest["codec"], arrays)
    return SnapshotData(
        fm_version=fm_version, snapshot_id=manifest["snapshot_id"], codec=codec,
        created_ms=int(manifest["created_ms"]), user_ids=arrays["user_ids"], offsets=offsets, ts=arrays["ts"],
        codes=arrays["codes"], scales=arrays["scales"], ad_ids=arrays["ad_ids"], ad_codes=arrays["ad_codes"],
        ad_scales=arrays["ad_scales"], prior=arrays["prior"], max_segment=int(manifest["max_segment"]),
        event_ids=arrays.get("event_ids", np.zeros(0, np.int64)), coverage=dict(manifest.get("coverage", {})),
        extra={"manifest": manifest},
    )
