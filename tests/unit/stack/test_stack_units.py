"""Unit tests of the stack's parts that need no running process: config limits, the run-folder state, the secret
file, process liveness, and the balancer configs (checked by the real haproxy / nginx config parsers)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from embedding_cache.redis_client import redact
from stack import balancer, procs, redis_nodes
from stack.config import StackConfig, StackError
from stack.state import ProcessRecord, StackState, new_password, read_password, read_state, write_state


@pytest.mark.parametrize(("field", "value", "message"), [
    ("replicas", 0, "--replicas: must be 1..32"),
    ("replicas", 33, "--replicas: must be 1..32"),
    ("port", 70000, "--port: must be 0..65535"),
    ("balancer", "envoy", "--balancer"),
    ("redis", "sentinel", "--redis"),
    ("redis_shards", 2, "--redis-shards: must be 3..16"),
    ("stop_timeout_s", 0.0, "--stop-timeout-s"),
])
def test_config_refuses_values_outside_limits(tmp_path: Path, field: str, value: object, message: str) -> None:
    with pytest.raises(StackError, match=message.replace(".", r"\.")):
        StackConfig(repository=tmp_path, **{field: value})


def test_config_names_a_missing_repository(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="--repository .*no model repository"):
        StackConfig(repository=tmp_path / "absent")


def test_state_round_trips_and_is_replaced_atomically(tmp_path: Path) -> None:
    rec = ProcessRecord(role="replica", name="replica-0", pid=123, start_ticks=9, log="l", port=5, metrics_port=6)
    state = StackState(run_dir=str(tmp_path), balancer="haproxy", port=7, processes=[rec])
    write_state(tmp_path, state)
    assert read_state(tmp_path) == state
    assert [p.name for p in tmp_path.iterdir()] == ["stack.json"]  # no temp file left beside it


def test_password_file_is_0600_and_random(tmp_path: Path) -> None:
    first = new_password(tmp_path)
    mode = stat.S_IMODE(os.stat(tmp_path / "redis.password").st_mode)
    assert mode == 0o600
    assert read_password(tmp_path) == first and len(first) == 48
    assert new_password(tmp_path) != first


def test_redis_config_is_0600_and_holds_the_password_not_the_command_line(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    cmd = redis_nodes.write_node(tmp_path, 6399, "s3cret", cluster=True)
    conf = Path(cmd[-1])
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert "requirepass s3cret" in conf.read_text() and "masterauth s3cret" in conf.read_text()
    assert not any("s3cret" in part for part in cmd)


def test_redact_hides_only_the_password() -> None:
    assert redact("redis://:pw@127.0.0.1:1/0") == "redis://:***@127.0.0.1:1/0"
    assert redact("redis+cluster://u:pw@h:1,h:2/") == "redis+cluster://u:***@h:1,h:2/"
    assert redact("redis://127.0.0.1:1/0") == "redis://127.0.0.1:1/0"


def test_alive_tells_a_recycled_pid_from_the_recorded_process(tmp_path: Path) -> None:
    proc, rec = procs.spawn([sys.executable, "-c", "import time; time.sleep(30)"], role="t", name="t",
                            log=tmp_path / "t.log", port=0)
    try:
        assert procs.alive(rec)
        assert not procs.alive(ProcessRecord(**{**rec.__dict__, "start_ticks": rec.start_ticks - 1}))
        assert procs.stop([rec], timeout_s=5) == [rec]
        proc.wait(timeout=5)
        assert not procs.alive(rec)
    finally:
        proc.kill()


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
            "time.sleep(60)")
    proc, rec = procs.spawn([sys.executable, "-c", code], role="t", name="t", log=tmp_path / "t.log", port=0)
    try:
        while "ready" not in (tmp_path / "t.log").read_text():
            pass
        procs.stop([rec], timeout_s=0.5)
        assert proc.wait(timeout=5) == -9  # SIGKILL, after SIGTERM was ignored
    finally:
        proc.kill()


@pytest.mark.parametrize("kind", ["haproxy", "nginx"])
def test_balancer_config_passes_the_balancers_own_check(tmp_path: Path, kind: str) -> None:
    try:
        cmd = balancer.command(kind, tmp_path, 50999, [50061, 50062])
    except StackError as exc:
        pytest.skip(str(exc))
    check = [cmd[0], "-c", "-f", cmd[-1]] if kind == "haproxy" else [*cmd, "-t"]
    proc = subprocess.run(check, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (tmp_path / ("haproxy.cfg" if kind == "haproxy" else "nginx/nginx.conf")).read_text()
    assert "127.0.0.1:50999" in text and "127.0.0.1:50061" in text and "127.0.0.1:50062" in text
    assert "0.0.0.0" not in text
