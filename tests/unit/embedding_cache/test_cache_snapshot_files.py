"""Embedded snapshots: atomic publish layout, refusal of damaged snapshots, old snapshot keeps serving."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from embedding_cache import CorruptSnapshotError, EmbeddedWriter, RetentionConfig, open_reader
from embedding_cache.embedded import list_snapshots, open_snapshot

T0 = 1_700_000_000_000


def _publish(root: Path, k: int, **kwargs: object) -> str:
    w = EmbeddedWriter(root, "fm-v1", dim=4, codec="int8", **kwargs)
    w.append_user_codes(np.arange(10), np.full(10, T0 + k), np.full((10, 4), k / 10, np.float32))
    w.append_ad_codes(np.arange(3), np.full((3, 4), k / 10, np.float32))
    return w.publish()


def test_layout_and_manifest(tmp_path: Path) -> None:
    sid = _publish(tmp_path, 1)
    vdir = tmp_path / "fm-v1"
    assert (vdir / "CURRENT").read_text().strip() == sid
    manifest = json.loads((vdir / "snapshots" / sid / "manifest.json").read_text())
    assert manifest["fm_version"] == "fm-v1" and manifest["dim"] == 4 and manifest["codec"]["codec"] == "int8"
    assert manifest["n_users"] == 10 and manifest["n_rows"] == 10 and manifest["n_ads"] == 3
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())
    assert not [p for p in (vdir / "snapshots").iterdir() if p.name.startswith(".tmp")]


@pytest.mark.parametrize("damage", ["truncate_codes", "flip_offsets", "flip_codes", "manifest", "missing_ts"])
def test_damaged_snapshot_refused_and_previous_keeps_serving(tmp_path: Path, damage: str) -> None:
    _publish(tmp_path, 1)
    reader = open_reader("embedded", tmp_path, "fm-v1")
    sid = _publish(tmp_path, 2)
    sdir = tmp_path / "fm-v1" / "snapshots" / sid
    if damage == "truncate_codes":
        data = (sdir / "codes.bin").read_bytes()
        (sdir / "codes.bin").write_bytes(data[:-7])
    elif damage in ("flip_offsets", "flip_codes"):
        path = sdir / ("offsets.bin" if damage == "flip_offsets" else "codes.bin")
        data = bytearray(path.read_bytes())
        data[8] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "manifest":
        (sdir / "manifest.json").write_text((sdir / "manifest.json").read_text()[:-20])
    else:
        (sdir / "ts.bin").unlink()
    with pytest.raises(CorruptSnapshotError, match=sid):
        reader.refresh()
    assert reader.snapshot_id == "s000001" and reader.metrics.refresh_failures == 1
    hb = reader.user_history(np.arange(10), T0 + 100, 4)
    assert (hb.lengths == 1).all()
    np.testing.assert_allclose(hb.codes[:, 0], 0.1, atol=1e-2)
    # a reader opened now (a restarted server) skips the damaged CURRENT for the newest valid snapshot
    assert open_reader("embedded", tmp_path, "fm-v1").snapshot_id == "s000001"


def test_full_verification_catches_large_file_damage(tmp_path: Path) -> None:
    sid = _publish(tmp_path, 1)
    open_snapshot(tmp_path, "fm-v1", verify="full")
    path = tmp_path / "fm-v1" / "snapshots" / sid / "ts.bin"
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptSnapshotError, match="sha256"):
        open_snapshot(tmp_path, "fm-v1", verify="full")


def test_snapshot_retention_keeps_the_newest(tmp_path: Path) -> None:
    for k in range(1, 6):
        _publish(tmp_path, k, retention=RetentionConfig(keep_snapshots=2))
    assert list_snapshots(tmp_path, "fm-v1") == ["s000004", "s000005"]
    hb = open_reader("embedded", tmp_path, "fm-v1").user_history(np.array([0]), T0 + 100, 8)
    assert hb.lengths[0] == 5  # rows carried from every earlier snapshot


def _publish_large(root: Path) -> Path:
    """~13 MiB of codes (float32, 4 blocks) and ~1.6 MiB of timestamps: files larger than one block."""
    w = EmbeddedWriter(root, "fm-v1", dim=64, codec="float32")
    n = 50_000
    w.append_user_codes(np.arange(n) // 5, np.full(n, T0) + np.arange(n) % 5,
                        np.random.default_rng(0).uniform(-1, 1, (n, 64)).astype(np.float32))
    w.append_ad_codes(np.arange(3), np.zeros((3, 64), np.float32))
    return root / "fm-v1" / "snapshots" / w.publish()


def test_every_file_is_verified_by_default_block_by_block(tmp_path: Path) -> None:
    from embedding_cache.snapshot_files import BLOCK_BYTES

    sdir = _publish_large(tmp_path)
    spec = json.loads((sdir / "manifest.json").read_text())["files"]["codes"]
    assert spec["bytes"] > 3 * BLOCK_BYTES and len(spec["blocks"]) == -(-spec["bytes"] // BLOCK_BYTES)
    open_reader("embedded", tmp_path, "fm-v1")
    with open(sdir / "codes.bin", "r+b") as f:  # one flipped bit in the third block, size unchanged
        f.seek(2 * BLOCK_BYTES + 12345)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(CorruptSnapshotError, match=r"codes.bin block 2 \(bytes 8388608\.\.12582912\) sha256"):
        open_reader("embedded", tmp_path, "fm-v1")
    with pytest.raises(CorruptSnapshotError, match="codes.bin block 2"):
        open_snapshot(tmp_path, "fm-v1")


def test_snapshot_without_block_list_is_hashed_whole(tmp_path: Path) -> None:
    """A snapshot written before per-block checksums: its files are still verified on open, whole."""
    from embedding_cache.snapshot_files import _header_digest

    sdir = _publish_large(tmp_path)
    manifest = json.loads((sdir / "manifest.json").read_text())
    for spec in manifest["files"].values():
        del spec["blocks"], spec["block_bytes"]
    manifest["header_sha256"] = _header_digest(manifest)
    (sdir / "manifest.json").write_text(json.dumps(manifest))
    open_snapshot(tmp_path, "fm-v1")
    data = bytearray((sdir / "ts.bin").read_bytes())
    data[-1] ^= 0x80
    (sdir / "ts.bin").write_bytes(bytes(data))
    with pytest.raises(CorruptSnapshotError, match=r"ts.bin sha256 mismatch"):
        open_snapshot(tmp_path, "fm-v1")


def test_block_list_that_does_not_cover_the_file_is_refused(tmp_path: Path) -> None:
    from embedding_cache.snapshot_files import _header_digest

    sdir = _publish_large(tmp_path)
    manifest = json.loads((sdir / "manifest.json").read_text())
    manifest["files"]["codes"]["blocks"].pop()  # a re-sealed manifest that skips the last block
    manifest["header_sha256"] = _header_digest(manifest)
    (sdir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptSnapshotError, match="block checksums for"):
        open_snapshot(tmp_path, "fm-v1")


def test_a_reader_opening_on_a_corrupt_current_serves_the_newest_valid_snapshot(tmp_path: Path, caplog) -> None:
    retention = RetentionConfig(keep_snapshots=3)
    first, second, third = (_publish(tmp_path, k, retention=retention) for k in (1, 2, 3))
    codes = tmp_path / "fm-v1" / "snapshots" / third / "codes.bin"
    codes.write_bytes(bytes(b ^ 0xFF for b in codes.read_bytes()))  # CURRENT's snapshot damaged on disk
    with caplog.at_level("WARNING"):
        reader = open_reader("embedded", tmp_path, "fm-v1")
    assert reader.snapshot_id == second
    assert f"CURRENT snapshot {third} is corrupt" in caplog.text and f"serving {second}" in caplog.text
    with pytest.raises(CorruptSnapshotError):  # a pinned snapshot is never substituted
        open_reader("embedded", tmp_path, "fm-v1", snapshot_id=third)
    for sid in (first, second):
        bad = tmp_path / "fm-v1" / "snapshots" / sid / "codes.bin"
        bad.write_bytes(bytes(b ^ 0xFF for b in bad.read_bytes()))
    with pytest.raises(CorruptSnapshotError, match=third):  # nothing valid left: the original error
        open_reader("embedded", tmp_path, "fm-v1")
