"""Fault suite, embedding snapshots: a snapshot whose files are corrupt is published (CURRENT switched
to it) while the real `adrank serve` process scores a stream of LoopFM requests from the embedded
cache. The server must refuse it (verification on open), log that, keep serving the snapshot it has
with 0 failed requests, and take the snapshot once its files are intact — without a restart.
Counts sent / ok / degraded / failed (`pytest -s` prints them)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

from embedding_cache.embedded import CURRENT, read_current, version_dir
from models.catalog import load_catalog
from models.embed import CacheLocation, publish_codes
from protos.adrank.v1 import ranking_pb2, ranking_pb2_grpc
from serving.client import build_request
from serving.process import ServerProcess

FM = "fm-test01"
DEGRADED = ranking_pb2.FLAG_HISTORY_CACHE_UNAVAILABLE


def _snapshots(root: Path) -> Path:
    return version_dir(root, FM) / "snapshots"


def _switch_current(root: Path, snapshot_id: str) -> None:
    """What the writer does: CURRENT.tmp then an atomic rename over CURRENT."""
    tmp = version_dir(root, FM) / f"{CURRENT}.tmp-test"
    tmp.write_text(snapshot_id)
    os.replace(tmp, version_dir(root, FM) / CURRENT)


def test_corrupt_snapshot_published_under_load_is_refused_and_the_old_one_keeps_serving(loopfm_run, tmp_path):
    live, staging = tmp_path / "live", tmp_path / "staging"
    shutil.copytree(loopfm_run["cache"], live)
    shutil.copytree(loopfm_run["cache"], staging)
    old_id = read_current(live, FM)
    ev = loopfm_run["events"]
    rows = np.arange(len(ev))[::2]  # a new publish: half the events again, other codes
    new_id = publish_codes(CacheLocation("embedded", str(staging)), FM, ev, rows, -loopfm_run["codes"],
                           codec="int8").snapshot_id
    assert new_id != old_id
    # the new snapshot arrives in the live store with one flipped byte in its largest file
    shutil.copytree(_snapshots(staging) / new_id, _snapshots(live) / f".tmp-{new_id}-incoming")
    os.rename(_snapshots(live) / f".tmp-{new_id}-incoming", _snapshots(live) / new_id)
    victim = max((p for p in (_snapshots(live) / new_id).iterdir() if p.suffix != ".json"),
                 key=lambda p: p.stat().st_size)
    original = victim.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF

    catalog = load_catalog(loopfm_run["dir"] / "catalog.npz")
    users = np.unique(ev["user_id"])[:40]
    requests = [build_request(int(u), 30, catalog, seed=int(u), request_time_ms=int(ev["ts_ms"][-1]) + 1)
                for u in users]
    records: list[tuple[float, str]] = []
    stop = threading.Event()

    def stream(target: str) -> None:
        with grpc.insecure_channel(target) as ch:
            stub, i = ranking_pb2_grpc.AdRankingStub(ch), 0
            while not stop.is_set():
                t0 = time.perf_counter()
                try:
                    resp = stub.Score(requests[i % len(requests)], timeout=2.0)
                    outcome = "degraded" if DEGRADED in resp.flags else "ok"
                except grpc.RpcError as err:
                    outcome = err.code().name
                records.append((t0, outcome))
                i += 1

    serve = ["--repository", str(loopfm_run["repo"]), "--model", "vm_loopfm", "--cache-dir", str(live),
             "--cache-refresh-s", "0.3"]
    with ServerProcess(serve) as srv:
        worker = threading.Thread(target=stream, args=(srv.target,), daemon=True)
        worker.start()
        time.sleep(1.0)
        victim.write_bytes(bytes(damaged))
        t_corrupt = time.perf_counter()
        _switch_current(live, new_id)
        time.sleep(2.0)
        refused_log = srv.log_text()
        t_repair = time.perf_counter()
        victim.write_bytes(original)  # the files made whole: the next refresh takes the snapshot
        time.sleep(1.5)
        stop.set()
        worker.join(5)
        log = srv.log_text()
    during = Counter(o for t, o in records if t_corrupt <= t < t_repair)
    after = Counter(o for t, o in records if t >= t_repair)
    refusals = [line for line in log.splitlines() if "refresh refused" in line and new_id in line]
    before = Counter(o for t, o in records if t < t_corrupt)
    print(f"\ncorrupt snapshot {new_id} published under load: before {dict(before)}"
          f"; while CURRENT named it {dict(during)} (refresh refused {len(refusals)}x, e.g. "
          f"{refusals[0].split('refresh refused: ')[-1][:160] if refusals else None}); after repair {dict(after)}")
    assert sum(during.values()) > 20 and set(during) == {"ok"}  # 0 failed, 0 degraded: the old snapshot served
    assert set(after) == {"ok"}
    assert "refresh refused" in refused_log and "sha256 mismatch" in refused_log and new_id in refused_log
    assert f"now serving snapshot {new_id}" not in refused_log
    assert f"now serving snapshot {new_id}" in log  # taken once intact, without a restart
