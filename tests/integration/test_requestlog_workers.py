"""`adrank serve --workers 2 --request-log DIR`: each worker has its own sink and its own writer process.

Both write into one folder under names that carry the writing process's pid, so the files never collide;
after the unit drains (SIGTERM), the folder holds every request exactly once, and no writer process
outlives its worker.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import grpc

from models.catalog import load_catalog
from models.data.requestlog import read_request_log, request_log_files
from protos.adrank.v1 import ranking_pb2_grpc
from serving.client import build_request
from serving.process import ServerProcess

CHANNELS, PER_CHANNEL = 12, 10


def _descendants(pid: int) -> set[int]:
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            children = (task / "children")
            if children.exists():
                kids = {int(c) for c in children.read_text().split()}
                out |= kids
                todo += list(kids)
    return out


def test_two_workers_each_log_through_their_own_writer_process(tiny_run: Path, tmp_path: Path) -> None:
    catalog = load_catalog(tiny_run / "catalog.npz")
    ts = int(catalog["max_ts_ms"][0])
    log_dir = tmp_path / "requestlog"
    srv = ServerProcess(["--repository", str(tiny_run / "model_repository"), "--workers", "2",
                         "--request-log", str(log_dir),
                         "--request-log-writer", "process"], env={"ADRANK_DRAIN_DELAY_S": "0"})
    sent = []
    with srv:
        processes = _descendants(srv.proc.pid)
        for c in range(CHANNELS):  # a new connection each: SO_REUSEPORT spreads them over the workers
            with grpc.insecure_channel(srv.target) as ch:
                stub = ranking_pb2_grpc.AdRankingStub(ch)
                for k in range(PER_CHANNEL):
                    rid = f"c{c}-{k}"
                    stub.Score(build_request(k, 10, catalog, seed=c * 100 + k, request_time_ms=ts, request_id=rid),
                               timeout=10)
                    sent.append(rid)
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(60) == 0, srv.log_text()[-3000:]
    assert len(processes) == 4, processes  # two workers, each with its writer process
    assert all(not Path(f"/proc/{pid}").exists() for pid in processes), "a process outlived the drain"
    ids = read_request_log(log_dir, columns=["request_id"]).column("request_id").to_pylist()
    assert sorted(ids) == sorted(sent)
    writers = {re.search(r"-(\d+)-\d{6}\.parquet$", p.name).group(1) for p in request_log_files(log_dir)}
    print(f"{len(sent)} requests logged in {len(request_log_files(log_dir))} files by writers {sorted(writers)}")
    assert len(writers) == 2  # both workers answered and logged, each through its own writer process
    assert not [p for p in log_dir.iterdir() if not p.name.endswith(".parquet")]
