"""`adrank triton start|status|load|stop` across processes (each verb its own Python process), and the
typed refusal without the extra."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import triton_fixtures

from serving.backends.triton import TritonBackend
from serving.errors import BackendUnavailable
from serving.triton import launcher

ROOT = Path(__file__).resolve().parents[2]
triton_repo = triton_fixtures.triton_repo


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serving.triton.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.skipif(importlib.util.find_spec("pytriton") is None, reason="nvidia-pytriton (the 'triton' extra) missing")
def test_start_status_load_stop_across_processes(triton_repo, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(triton_repo, repo)
    state = tmp_path / "state"
    started = _cli("start", "--repository", str(repo), "--model", triton_fixtures.MODEL, "--state-dir", str(state))
    try:
        assert started.returncode == 0, started.stderr + started.stdout
        assert "target python" in started.stdout and "ready: grpc 127.0.0.1:" in started.stdout
        handle = launcher.status(state)
        assert handle is not None and launcher._is_tritonserver(handle.pid)
        shown = _cli("status", "--state-dir", str(state))
        assert shown.returncode == 0 and f'"pid": {handle.pid}' in shown.stdout
        again = _cli("start", "--repository", str(repo), "--state-dir", str(state))
        assert again.returncode == 2 and "already recorded" in again.stderr
        loaded = _cli("load", "--state-dir", str(state))
        assert loaded.returncode == 0 and f"loaded {triton_fixtures.MODEL}" in loaded.stdout, loaded.stderr
        backend = TritonBackend(handle.grpc_url, repo, timeout_s=1.0)
        asyncio.run(backend.start())  # the table is built; the next loop gets its own channel
    finally:
        stopped = _cli("stop", "--state-dir", str(state))
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr
    assert launcher.status(state) is None and not (state / launcher.STATE_FILE).exists()
    assert not list(Path("/dev/shm").glob(f"{handle.shm_prefix}*"))
    assert _cli("status", "--state-dir", str(state)).returncode == 1

    async def after_stop() -> None:  # the server is gone: a request is UNAVAILABLE, typed
        try:
            await backend.infer(backend.resolve(triton_fixtures.MODEL, None), triton_fixtures.sample_inputs(3))
        finally:
            await backend.close()

    with pytest.raises(BackendUnavailable, match="UNAVAILABLE"):
        asyncio.run(after_stop())


def test_stale_state_is_cleaned_and_stop_without_server_is_a_no_op(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    shm = Path("/dev/shm") / f"adrank_test_{dead.pid}_x_ref"
    shm.write_bytes(b"")
    record = {"pid": dead.pid, "grpc_port": 1, "http_port": 2, "metrics_port": 3, "repository": str(tmp_path),
              "models": ["vm"], "log_file": "", "state_dir": str(tmp_path), "shm_prefix": f"adrank_test_{dead.pid}_",
              "started_at": 0.0}
    (tmp_path / launcher.STATE_FILE).write_text(json.dumps(record))
    assert launcher.status(tmp_path) is None
    assert not (tmp_path / launcher.STATE_FILE).exists() and not shm.exists()
    assert launcher.stop(tmp_path) is False


def test_missing_extra_is_a_typed_error(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pytriton" else real(name, *a))
    with pytest.raises(launcher.TritonNotInstalled, match=r"pip install -e '\.\[triton\]'"):
        launcher.start(tmp_path, state_dir=tmp_path / "state")
