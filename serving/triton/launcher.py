"""Starts, stops and reports the tritonserver bundled in nvidia-pytriton, for local runs and tests.

Why a launcher of our own rather than pytriton's: pytriton binds Python callables, while we serve a
model repository written by `exporters.triton_repo`. The recipe (docs/triton.md) is what pytriton's
own launcher does: a backend folder holding the python backend and the stub for this Python, the
wheel's libraries plus this Python's LIBDIR on LD_LIBRARY_PATH, and the venv's `bin/` first on PATH
so the stub imports this environment's numpy/onnxruntime.

The server listens on 127.0.0.1 only, on free ports, with explicit model control, its own
shared-memory prefix (removed on stop) and a log file. Its pid and ports go to `<state_dir>/triton.json`
so `adrank triton start|stop|status` work across processes.

Usage::

    handle = start("runs/demo/model_repository", models=["vm"], state_dir="runs/triton")
    ...  # TritonBackend(handle.grpc_url, "runs/demo/model_repository")
    stop(handle)
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

STATE_FILE = "triton.json"
DEFAULT_STATE_DIR = "runs/triton"


class TritonLaunchError(RuntimeError):
    """tritonserver could not be started, did not become ready, or a model failed to load."""


class TritonNotInstalled(TritonLaunchError):
    """The `triton` extra (nvidia-pytriton, which bundles tritonserver) is not installed."""


class TritonNotRunning(TritonLaunchError):
    """No server is recorded in the state directory, or the recorded one has exited."""


@dataclass(frozen=True)
class BundledServer:
    """Paths inside the nvidia-pytriton wheel."""

    binary: Path
    libs: Path
    python_backend: Path
    stub: Path


@dataclass(frozen=True, kw_only=True)
class TritonHandle:
    """A running server, as written to `<state_dir>/triton.json`."""

    pid: int
    grpc_port: int
    http_port: int
    metrics_port: int
    repository: str
    models: tuple[str, ...]
    log_file: str
    state_dir: str
    shm_prefix: str
    started_at: float

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @classmethod
    def from_dict(cls, d: dict) -> TritonHandle:
        return cls(**{**d, "models": tuple(d.get("models", ()))})


# Servers this process started: waiting on the Popen reaps them (no zombie to mistake for alive).
_CHILDREN: dict[int, subprocess.Popen] = {}


def bundled_server() -> BundledServer:
    """Locates the bundled tritonserver; raises TritonNotInstalled naming the extra to install."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotInstalled("the bundled tritonserver needs the 'triton' extra: "
                                 "pip install -e '.[triton]' (nvidia-pytriton==0.7.0)")
    root = Path(next(iter(spec.submodule_search_locations)))
    minor = f"{sys.version_info.major}.{sys.version_info.minor}"
    server = BundledServer(binary=root / "tritonserver" / "bin" / "tritonserver",
                           libs=root.parent / "nvidia_pytriton.libs",
                           python_backend=root / "tritonserver" / "backends" / "python",
                           stub=root / "tritonserver" / "python_backend_stubs" / minor / "triton_python_backend_stub")
    missing = [str(p) for p in asdict(server).values() if not Path(p).exists()]
    if missing:
        raise TritonNotInstalled(f"nvidia-pytriton is installed but incomplete for Python {minor}: missing {missing}")
    return server


def backend_directory(state_dir: Path, server: BundledServer) -> Path:
    """`<state_dir>/backends/python/` holding the backend library, its utils and this Python's stub."""
    target = state_dir / "backends" / "python"
    target.mkdir(parents=True, exist_ok=True)
    for src in (server.python_backend / "libtriton_python.so",
                server.python_backend / "triton_python_backend_utils.py", server.stub):
        link = target / src.name
        if link.is_symlink() or link.exists():
            if link.resolve() == src.resolve():
                continue
            link.unlink()
        link.symlink_to(src)
    return target.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(server: BundledServer) -> dict[str, str]:
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = ":".join(p for p in (str(server.libs), libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    # the stub finds numpy / onnxruntime through the first python on PATH: make it this venv's
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    return env


def _state_path(state_dir: str | Path) -> Path:
    return Path(state_dir) / STATE_FILE


def _http(handle: TritonHandle, path: str, *, method: str = "GET", timeout: float = 2.0) -> tuple[int, str]:
    req = urllib.request.Request(handle.http_url + path, method=method, data=b"{}" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie still answers kill(0); its state letter says it is gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _is_tritonserver(pid: int) -> bool:
    """Guards against signalling a recycled pid after the recorded server died."""
    try:
        return b"tritonserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _log_tail(path: str, n: int = 2000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def load_model(handle: TritonHandle, name: str, *, timeout: float = 60.0) -> None:
    """Asks the server to (re)load `name` from its repository; raises TritonLaunchError with Triton's
    message when the load fails (versions already loaded keep serving)."""
    code, body = _http(handle, f"/v2/repository/models/{name}/load", method="POST", timeout=timeout)
    if code != 200:
        hint = ""
        if "unable to find backend library" in body:
            hint = " (the bundled server has only the python backend: write the config with target 'python')"
        raise TritonLaunchError(f"tritonserver refused to load model {name!r}: {body.strip()}{hint}")


def start(repository: str | Path, *, models: tuple[str, ...] | list[str] = (), grpc_port: int | None = None,
          http_port: int | None = None, metrics_port: int | None = None, log_file: str | Path | None = None,
          state_dir: str | Path = DEFAULT_STATE_DIR, ready_timeout_s: float = 60.0) -> TritonHandle:
    """Launches tritonserver on `repository`, loads `models`, and returns once they are ready.

    Raises TritonNotInstalled without the extra, TritonLaunchError (with the log's tail) when the
    server exits, misses `ready_timeout_s`, or refuses a model; the server is stopped in those cases."""
    server = bundled_server()
    repository = Path(repository).resolve()
    if not repository.is_dir():
        raise TritonLaunchError(f"{repository}: model repository not found")
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    current = status(state)
    if current is not None:
        raise TritonLaunchError(f"a tritonserver (pid {current.pid}, grpc {current.grpc_url}) is already recorded "
                                f"in {state}: stop it first")
    log_path = Path(log_file).resolve() if log_file else state / "tritonserver.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    ports = [p or free_port() for p in (grpc_port, http_port, metrics_port)]
    shm_prefix = f"adrank_{os.getpid()}_{uuid.uuid4().hex[:8]}_"
    cmd = [str(server.binary), f"--model-repository={repository}",
           f"--backend-directory={backend_directory(state, server)}",
           "--backend-config=python,shm-default-byte-size=4194304",
           "--backend-config=python,shm-growth-byte-size=1048576",
           f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
           "--model-control-mode=explicit", "--strict-readiness=true",
           "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1",
           f"--grpc-port={ports[0]}", f"--http-port={ports[1]}", f"--metrics-port={ports[2]}",
           "--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0", "--exit-timeout-secs=10",
           "--allow-cpu-metrics=true", "--allow-gpu-metrics=false", "--log-verbose=0"]
    with open(log_path, "ab") as log:
        # its own session: Ctrl-C in the launching shell does not reach it, and stop() can signal
        # the whole group (server + python stubs) without touching anything else
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=server_env(server), start_new_session=True)
    _CHILDREN[proc.pid] = proc
    handle = TritonHandle(pid=proc.pid, grpc_port=ports[0], http_port=ports[1], metrics_port=ports[2],
                          repository=str(repository), models=tuple(models), log_file=str(log_path),
                          state_dir=str(state), shm_prefix=shm_prefix, started_at=time.time())
    tmp = _state_path(state).with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(handle), indent=2))
    tmp.replace(_state_path(state))
    try:
        _wait_ready(handle, proc, ready_timeout_s)
        for name in models:
            load_model(handle, name, timeout=ready_timeout_s)
    except BaseException:
        stop(handle)
        raise
    return handle


def _wait_ready(handle: TritonHandle, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TritonLaunchError(f"tritonserver exited with code {proc.returncode} during start-up; "
                                    f"log {handle.log_file}:\n{_log_tail(handle.log_file)}")
        try:
            if _http(handle, "/v2/health/ready", timeout=1.0)[0] == 200:
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise TritonLaunchError(f"tritonserver not ready after {timeout_s:.0f} s; log {handle.log_file}:\n"
                            f"{_log_tail(handle.log_file)}")


def status(state_dir: str | Path = DEFAULT_STATE_DIR) -> TritonHandle | None:
    """The recorded server if it is still running; a stale record (server gone) is removed."""
    path = _state_path(state_dir)
    try:
        handle = TritonHandle.from_dict(json.loads(path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError, TypeError):
        return None
    if _alive(handle.pid) and _is_tritonserver(handle.pid):
        return handle
    _cleanup(handle)
    return None


def _cleanup(handle: TritonHandle) -> None:
    for f in Path("/dev/shm").glob(f"{handle.shm_prefix}*"):
        f.unlink(missing_ok=True)
    path = _state_path(handle.state_dir)
    try:
        if json.loads(path.read_text()).get("pid") == handle.pid:
            path.unlink()
    except (FileNotFoundError, json.JSONDecodeError):
        pass
    _CHILDREN.pop(handle.pid, None)


def stop(target: TritonHandle | str | Path = DEFAULT_STATE_DIR, *, timeout_s: float = 15.0) -> bool:
    """SIGINT (Triton drains and unloads), SIGKILL to the process group after `timeout_s`; then removes
    the shared-memory files and the state record. `target` is a handle or a state dir. Returns False
    when nothing was running."""
    handle = target if isinstance(target, TritonHandle) else status(target)
    if handle is None:
        return False
    was_running = _alive(handle.pid) and (handle.pid in _CHILDREN or _is_tritonserver(handle.pid))
    if was_running:
        os.kill(handle.pid, signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        while _alive(handle.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        try:  # the group is the server's own session: the server and its python stubs
            os.killpg(handle.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        child = _CHILDREN.get(handle.pid)
        if child is not None:
            child.wait(timeout=5)
    _cleanup(handle)
    return was_running


class TritonServer:
    """Context manager around start/stop::

        with TritonServer(repo, models=["vm"], state_dir=tmp) as handle:
            ...
    """

    def __init__(self, repository: str | Path, **kwargs: object) -> None:
        self.repository, self.kwargs = repository, kwargs
        self.handle: TritonHandle | None = None

    def __enter__(self) -> TritonHandle:
        self.handle = start(self.repository, **self.kwargs)  # type: ignore[arg-type]
        return self.handle

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            stop(self.handle)
