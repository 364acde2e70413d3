"""SIGKILL of a process that is writing the request log leaves only complete Parquet files.

A child process offers records as fast as its writer keeps up, with files rotated every few KB, and
reports its counters; the test kills it with SIGKILL at a different moment in each run (while a row
group, a footer or a rename may be under way), then reads every `.parquet` in the folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from models.data.requestlog import check_schema, request_log_files

ROOT = Path(__file__).resolve().parents[2]
CHILD = """
import sys, time
from serving.requestlog import RequestLogSink, SinkConfig
from tests.requestlog_fixtures import make_record
sink = RequestLogSink(SinkConfig(folder=sys.argv[1], queue_size=100_000, row_group_rows=20,
                                 max_file_bytes=8_000, poll_interval_s=0.002))
i, seen = 0, -1
while True:
    for _ in range(20):
        sink.offer(make_record(f"r{i:09d}", n=6))
        i += 1
    s = sink.stats()
    if s.files != seen:
        seen = s.files
        print(s.files, s.written, s.dropped_total, flush=True)
    time.sleep(0.001)
"""


@pytest.mark.parametrize("extra_delay_s", [0.0, 0.013, 0.037])
def test_sigkill_while_writing_leaves_only_complete_files(tmp_path: Path, extra_delay_s: float) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                             cwd=ROOT, env=env)
    last = (0, 0, 0)
    try:
        deadline = time.monotonic() + 60
        while last[0] < 4 and time.monotonic() < deadline:
            line = child.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            last = tuple(int(x) for x in line.split())  # type: ignore[assignment]
        time.sleep(extra_delay_s)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        child.stdout.close()  # type: ignore[union-attr]
    files, written, dropped = last
    assert files >= 4, "the child never published four files"
    ids: list[str] = []
    for path in request_log_files(tmp_path):
        check_schema(pq.read_schema(path), path.name)
        table = pq.read_table(path)  # raises on a truncated file or a missing footer
        assert table.num_rows > 0
        ids += table.column("request_id").to_pylist()
    assert len(ids) >= written
    if dropped == 0:  # nothing was dropped before the kill: the files hold an unbroken prefix of the offers
        assert ids == [f"r{i:09d}" for i in range(len(ids))]
    leftovers = [p.name for p in tmp_path.iterdir() if not p.name.endswith(".parquet")]
    print(f"killed after {files} published files: {len(request_log_files(tmp_path))} complete files, "
          f"{len(ids)} rows (child reported {written}), {len(leftovers)} temp file(s) left")
    assert all(name.startswith(".requests-") and name.endswith(".parquet.tmp") for name in leftovers)
