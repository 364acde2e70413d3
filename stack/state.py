"""The run folder of a stack: `stack.json` (pids, ports, logs) written atomically, and the Redis password.

`stack.json` is rewritten (temp file + rename) after every process is started, so a stack that failed half-way
is still fully described and `adrank down` stops what it lists. It holds no secret: the password lives in
`redis.password` (mode 0600, created exclusively) and is read back by whoever needs the URL.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_FILE = "stack.json"
PASSWORD_FILE = "redis.password"


@dataclass(frozen=True, kw_only=True)
class ProcessRecord:
    """One started process. `start_ticks` (field 22 of /proc/PID/stat) tells it from a later process that was
    given the same pid, so `adrank down` never signals a stranger."""

    role: str  # redis | triton | replica | balancer
    name: str
    pid: int
    start_ticks: int
    log: str
    port: int
    metrics_port: int | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


@dataclass(kw_only=True)
class StackState:
    run_dir: str
    balancer: str
    port: int = 0
    redis: str = "none"
    redis_ports: list[int] = field(default_factory=list)
    triton_state_dir: str | None = None
    processes: list[ProcessRecord] = field(default_factory=list)
    complete: bool = False  # True once every part answered its health check

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def of_role(self, role: str) -> list[ProcessRecord]:
        return [p for p in self.processes if p.role == role]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> StackState:
        d = json.loads(text)
        d["processes"] = [ProcessRecord(**p) for p in d.get("processes", [])]
        return cls(**d)


def write_state(run_dir: Path, state: StackState) -> None:
    """Atomic: readers see the previous or the new file, never a torn one."""
    path = run_dir / STATE_FILE
    tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(state.to_json())
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def read_state(run_dir: Path) -> StackState | None:
    try:
        return StackState.from_json((run_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        return None


def remove_state(run_dir: Path) -> None:
    (run_dir / STATE_FILE).unlink(missing_ok=True)


def write_secret_file(path: Path, text: str) -> None:
    """Create `path` with mode 0600 from the start (no window in which another user could read it)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def new_password(run_dir: Path) -> str:
    """A fresh random Redis password (URL-safe hex), stored in `<run_dir>/redis.password` (0600)."""
    password = secrets.token_hex(24)
    write_secret_file(run_dir / PASSWORD_FILE, password + "\n")
    return password


def read_password(run_dir: Path) -> str:
    return (run_dir / PASSWORD_FILE).read_text().strip()
