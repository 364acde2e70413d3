"""A started ranking server imports the serving runtime only: no torch, no training, no load tests.

The server runs as `adrank serve` under `python -X importtime`, which reports every module the process
imports; the list is read after it is SERVING (so lazily imported request-path modules count too).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from protos.adrank.v1 import ranking_pb2_grpc
from serving.client import build_request

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN_PACKAGES = ("torch", "loadtests", "locust", "tritonclient.http")
FORBIDDEN_MODULES = ("models.train", "models.experiment", "models.fm_pipeline", "models.pipeline", "models.vm",
                     "models.fm", "exporters.onnx_export", "exporters.torchscript_export", "adrank.demo", "loadtests.bench_triton")


@pytest.mark.slow
def test_a_started_loopfm_server_imports_no_torch_training_or_loadtests(loopfm_run, tmp_path):
    ready, log = tmp_path / "port", tmp_path / "imports.log"
    cmd = [sys.executable, "-X", "importtime", "-m", "adrank", "serve", "--port", "0", "--ready-file",
           str(ready), "--repository", str(loopfm_run["repo"]), "--model", "vm_loopfm",
           "--cache-dir", str(loopfm_run["cache"]), "--workers", "1"]  # the serving process itself, not a parent
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=fh, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        events = loopfm_run["events"]
        with grpc.insecure_channel(f"127.0.0.1:{int(ready.read_text())}") as ch:  # the request path runs too
            ranking_pb2_grpc.AdRankingStub(ch).Score(
                build_request(int(events["user_id"][-1]), 20, None, request_time_ms=int(events["ts_ms"][-1]) + 1),
                timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    imported = {line.rsplit("|", 1)[-1].strip() for line in log.read_text().splitlines() if "import time:" in line}
    assert "serving.server" in imported and "serving.history" in imported
    bad = sorted(m for m in imported if m.split(".")[0] in FORBIDDEN_PACKAGES or m in FORBIDDEN_MODULES
                 or any(m.startswith(p + ".") for p in FORBIDDEN_MODULES))
    assert bad == [], f"the serving process imported {bad}"
