"""On-disk snapshot format of the embedded store: raw little-endian arrays + a manifest with checksums.

    <root>/<fm_version>/CURRENT                      text: the current snapshot id (switched by rename)
    <root>/<fm_version>/snapshots/<snapshot_id>/
        manifest.json      fm_version, dim, codec params, row counts, per-file {dtype, shape, bytes, sha256,
                           block_bytes, blocks (sha256 of each 4 MiB block)}, and header_sha256 (a checksum
                           of the manifest itself)
        user_ids.bin int64 [U] sorted   offsets.bin int64 [U+1]   ts.bin int64 [R]   event_ids.bin int64 [R]
        codes.bin uint8 [R, bytes_per_row]   scales.bin float32 [R] (int8 only)
        ad_ids.bin int64 [A] sorted   ad_codes.bin uint8 [A, bpr]   ad_scales.bin float32 [A]
        prior.bin float32 [dim]   pq_centroids.bin float32 (pq only)
    manifest.json also records `coverage`: source, event-time high-water mark and row count

Files are memory-mapped read-only, so every process on a host shares one copy through the page cache.
Every byte of every file is checked against the manifest when a snapshot is opened: the blocks are hashed
in parallel threads (hashlib releases the GIL), which reads the files once and leaves them in the page
cache the first lookups need anyway. Snapshots written before block lists existed are hashed file by file.
Writing goes to a temp directory, every file and the directory are fsynced, then the directory is renamed
into place; only then is CURRENT switched (see embedded.py), so a reader never sees a partial snapshot.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from embedding_cache.codecs import codec_from_manifest
from embedding_cache.errors import CorruptSnapshotError, FmVersionMismatchError
from embedding_cache.snapshot_data import SnapshotData

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
# Files always checksummed in full when opening, even with verify="header".
_INDEX_FILES = ("user_ids", "offsets", "ad_ids", "prior", "pq_centroids")
BLOCK_BYTES = 4 << 20
"""Granularity of the per-block checksums: small enough to spread one large file over every core, large
enough that hashlib's per-call cost is noise and the manifest stays small (~16 KB of hashes per GB)."""
_PARALLEL_ABOVE_BYTES = 32 << 20  # below this a thread pool costs more than it saves

Verify = Literal["full", "header"]
""""full" (the default everywhere): every file hashed when opened. "header": sizes, the manifest's checksum
and the index files only; for tools that re-open a snapshot they have just verified, never for serving."""


def _sha256(buf: memoryview | bytes) -> str:
    return hashlib.sha256(buf).hexdigest()


def _block_digests(buf: memoryview | bytes) -> list[str]:
    return [_sha256(buf[i:i + BLOCK_BYTES]) for i in range(0, len(buf), BLOCK_BYTES)]


class _Check(NamedTuple):
    """One checksum to verify: bytes lo..hi of array `key` (stored as `file`) against `expected`."""

    key: str
    file: str
    block: int | None
    lo: int
    hi: int
    expected: str


def _checks(directory: Path, key: str, spec: dict, size: int) -> list[_Check]:
    file, blocks, step = spec["file"], spec.get("blocks"), int(spec.get("block_bytes", 0))
    if blocks is None or step <= 0:  # written before per-block checksums: one hash of the whole file
        return [_Check(key, file, None, 0, size, spec["sha256"])]
    if len(blocks) != -(-size // step):
        raise CorruptSnapshotError(f"snapshot {directory}: {file} has {len(blocks)} block checksums for {size} "
                                   f"bytes in {step}-byte blocks")
    return [_Check(key, file, i, i * step, min(size, (i + 1) * step), h) for i, h in enumerate(blocks)]


def verify_contents(directory: Path, arrays: dict[str, np.ndarray], checks: list[_Check]) -> None:
    """Hash every checked range (in threads when there is enough to share) and raise CorruptSnapshotError
    naming the first file and block whose bytes differ from the manifest."""
    views = {c.key: (memoryview(arrays[c.key]).cast("B") if arrays[c.key].size else b"") for c in checks}

    def ok(c: _Check) -> bool:
        return hmac.compare_digest(_sha256(views[c.key][c.lo:c.hi]), c.expected)

    total = sum(c.hi - c.lo for c in checks)
    if total > _PARALLEL_ABOVE_BYTES and len(checks) > 1:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            results = list(pool.map(ok, checks))
    else:
        results = [ok(c) for c in checks]
    for c, good in zip(checks, results, strict=True):
        if not good:
            where = "" if c.block is None else f" block {c.block} (bytes {c.lo}..{c.hi})"
            raise CorruptSnapshotError(f"snapshot {directory}: {c.file}{where} sha256 mismatch (corrupted)")


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
                       "bytes": int(arr.nbytes), "sha256": _sha256(buf), "block_bytes": BLOCK_BYTES,
                       "blocks": _block_digests(buf)}
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


def open_snapshot_dir(directory: Path, fm_version: str, verify: Verify = "full") -> SnapshotData:
    """Memory-map a snapshot after checking it against its manifest.

    Always: the manifest's own checksum, every file's size, the CSR invariants and the sha256 of the index
    files (ids, offsets, prior, codebooks). `verify="full"` (the default) hashes every other file too, per
    4 MiB block in parallel threads (docs/security.md gives the cost for 1M users); `verify="header"`
    skips the large code and timestamp files.
    """
    manifest = read_manifest(directory)
    if manifest.get("fm_version") != fm_version:
        raise FmVersionMismatchError(
            f"snapshot {directory} holds fm_version {manifest.get('fm_version')!r}, expected {fm_version!r}")
    arrays, checks = {}, []
    for name, spec in manifest["files"].items():
        path = directory / spec["file"]
        try:
            size = path.stat().st_size
        except OSError as exc:
            raise CorruptSnapshotError(f"snapshot {directory}: missing file {spec['file']}") from exc
        if size != spec["bytes"]:
            raise CorruptSnapshotError(
                f"snapshot {directory}: {spec['file']} has {size} bytes, manifest says {spec['bytes']} (truncated?)")
        arrays[name] = _map(path, spec)
        if verify == "full" or name in _INDEX_FILES:
            checks += _checks(directory, name, spec, size)
    verify_contents(directory, arrays, checks)
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
