"""The request-log sink of a real server under overload and under SIGKILL.

* The benchmark (`loadtests.bench_requestlog`) on a small budget: a logging server with a queue too
  small for its traffic drops records, and every request sent is accounted for (written + dropped),
  with exactly the written rows in the published files. The latency figures it prints are benchmark
  output, not asserted (docs/request-log.md has a full run and its command).
* SIGKILL of a logging LoopFM server while traffic flows and files are published every 0.1 s: every
  `.parquet` left reads completely with pyarrow, the only other files are the dead writer's temp
  files, and the next server started on the folder removes those.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest

from loadtests.bench_requestlog import BenchConfig, render, run_bench
from models.catalog import load_catalog
from models.data.requestlog import check_schema, read_request_log, request_log_files
from protos.adrank.v1 import ranking_pb2_grpc
from serving.client import build_request
from serving.process import ServerProcess


def test_overloaded_sink_drops_and_counts_every_record_while_the_server_answers(loopfm_run, tmp_path: Path):
    config = BenchConfig(str(loopfm_run["repo"]), str(loopfm_run["cache"]), "vm_loopfm",
                         str(loopfm_run["dir"] / "catalog.npz"), requests_per_block=400, blocks=2, warmup=50,
                         queue=4)
    report = run_bench(config, tmp_path / "log")
    print(render(report))
    sent = report["sent_to_logging_server"]
    assert sent == 50 + 2 * 400 == report["on"]["client"]["n"] + 50
    assert report["dropped"]["queue_full"] > 0  # overloaded: a 4-record queue, 50 ms between writer passes
    assert report["written"] + sum(report["dropped"].values()) == sent
    assert read_request_log(tmp_path / "log").num_rows == report["written"] > 0
    for name in ("off", "on"):
        assert report[name]["server"]["p99_us"] > 0 and report[name]["client"]["p99_us"] > 0


def _traffic(target: str, loopfm_run, stop: threading.Event, sent: list[int], k: int) -> None:
    catalog, rng = load_catalog(loopfm_run["dir"] / "catalog.npz"), np.random.default_rng(k)
    t = int(loopfm_run["events"]["ts_ms"][-1])
    users = loopfm_run["events"]["user_id"]
    with grpc.insecure_channel(target) as ch:
        stub = ranking_pb2_grpc.AdRankingStub(ch)
        while not stop.is_set():
            request = build_request(int(rng.choice(users)), 30, catalog, rng=rng, request_time_ms=t,
                                    request_id=f"k{k}-{sent[k]}")
            try:
                stub.Score(request, timeout=5)
                sent[k] += 1
            except grpc.RpcError:  # the server was killed
                return


@pytest.mark.parametrize("extra_delay_s", [0.0, 0.057])
def test_sigkill_of_a_logging_server_leaves_only_complete_parquet_files(loopfm_run, tmp_path: Path,
                                                                       extra_delay_s: float) -> None:
    log_dir = tmp_path / "requestlog"
    args = ["--repository", str(loopfm_run["repo"]), "--model", "vm_loopfm", "--cache-dir", str(loopfm_run["cache"]),
            "--request-log", str(log_dir), "--request-log-rotate-s", "0.1", "--drain-delay-s", "0"]
    stop, sent = threading.Event(), [0, 0]
    with ServerProcess(args) as server:
        threads = [threading.Thread(target=_traffic, args=(server.target, loopfm_run, stop, sent, k)) for k in range(2)]
        for th in threads:
            th.start()
        deadline = time.monotonic() + 60
        while len(list(log_dir.glob("*.parquet"))) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(extra_delay_s)
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(10)
        stop.set()
        for th in threads:
            th.join(10)
    files = request_log_files(log_dir)
    assert len(files) >= 3, "the server never published three files"
    ids: list[str] = []
    for path in files:
        check_schema(pq.read_schema(path), path.name)
        table = pq.read_table(path)  # raises on a truncated file or a missing footer
        assert table.num_rows > 0
        ids += table.column("request_id").to_pylist()
    assert len(ids) == len(set(ids)) and len(ids) <= sum(sent) + 2  # + a call each thread had in flight
    leftovers = [p for p in log_dir.iterdir() if not p.name.endswith(".parquet")]
    assert all(p.name.startswith(".requests-") and p.name.endswith(".parquet.tmp") for p in leftovers)
    print(f"killed after {sum(sent)} answered requests: {len(files)} complete files with {len(ids)} rows, "
          f"{len(leftovers)} temp file(s) left")
    with ServerProcess(args):  # the next server on the folder clears the dead writer's temp files
        pass
    assert not [p for p in log_dir.iterdir() if not p.name.endswith(".parquet")]
    assert read_request_log(log_dir).num_rows >= len(ids)
