"""Starting detached processes and stopping them for sure: SIGTERM to the process group, SIGKILL after a timeout.

Each process is started in its own session (`start_new_session`), so it outlives `adrank up`, Ctrl-C in the
shell does not reach it, and its group (nginx workers, Triton's python stubs) is signalled as one. A process is
alive when its pid exists, is not a zombie, and has the start time recorded when it was started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from stack.state import ProcessRecord


def start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot); None when the pid is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = stat.rsplit(")", 1)[1].split()  # fields after the command name, which may hold spaces
    return int(rest[19])


def _state_letter(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def alive(record: ProcessRecord) -> bool:
    state = _state_letter(record.pid)
    return state is not None and state not in ("Z", "X") and start_ticks(record.pid) == record.start_ticks


def spawn(cmd: list[str], *, role: str, name: str, log: Path, port: int, metrics_port: int | None = None,
          env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[subprocess.Popen, ProcessRecord]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=cwd, start_new_session=True)
    ticks = start_ticks(proc.pid)
    record = ProcessRecord(role=role, name=name, pid=proc.pid, start_ticks=ticks if ticks is not None else -1,
                           log=str(log), port=port, metrics_port=metrics_port)
    return proc, record


def _signal_group(record: ProcessRecord, sig: int) -> None:
    try:
        os.killpg(record.pid, sig)  # its own session: the group id is its pid
    except (ProcessLookupError, PermissionError):
        pass


def stop(records: Iterable[ProcessRecord], timeout_s: float) -> list[ProcessRecord]:
    """SIGTERM every live process's group, wait up to `timeout_s`, SIGKILL the groups still there.

    Returns the records that were alive when called. Records whose pid now belongs to another process (a
    different start time) are left alone."""
    running = [r for r in records if alive(r)]
    for r in running:
        _signal_group(r, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while any(alive(r) for r in running) and time.monotonic() < deadline:
        time.sleep(0.05)
    for r in running:  # the leader may be gone while a child of its group lingers: SIGKILL the group anyway
        _signal_group(r, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while any(alive(r) for r in running) and time.monotonic() < deadline:
        time.sleep(0.02)
    return running


def log_tail(path: str | Path, n: int = 2000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"
