"""Starts `adrank serve` as a child process and waits until it is SERVING (used by the demo, the
benchmarks and the integration tests, so all of them exercise the real server process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.security.tls import ClientTls, open_channel


class ServerProcess:
    """Usage::

        with ServerProcess(["--repository", repo]) as srv:
            score(srv.target, request)
    """

    def __init__(self, serve_args: list[str], *, startup_timeout_s: float = 60.0, log_path: str | None = None,
                 tls: ClientTls | None = None, env: dict[str, str] | None = None,
                 require_serving: bool = True, launcher: list[str] | None = None) -> None:
        self.serve_args = serve_args
        self.env = env or {}  # extra ADRANK_* variables for the child
        self.launcher = launcher  # another program running serve_forever: called with the ready file
        self.require_serving = require_serving  # False: a server that is up but (rightly) not ready
        self.tls = tls  # how this process's own health checks connect, when serve_args turn TLS on
        self.startup_timeout_s = startup_timeout_s
        self._tmp = tempfile.TemporaryDirectory(prefix="adrank-serve-")
        self.ready_file = Path(self._tmp.name) / "port"
        self.log_path = Path(log_path) if log_path else Path(self._tmp.name) / "server.log"
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        cmd = [sys.executable, "-m", "adrank", "serve", "--port", "0", "--ready-file", str(self.ready_file),
               *self.serve_args]
        if self.launcher is not None:
            cmd = [*self.launcher, str(self.ready_file)]
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        # no balancer watches a child's health: skip the drain delay unless the caller sets one; one
        # worker process unless the caller asks for more (--workers), whatever the machine's cores
        env = {"ADRANK_DRAIN_DELAY_S": "0", "ADRANK_WORKERS": "1", **os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"server not ready in {self.startup_timeout_s} s:\n{self.log_text()[-3000:]}")
            time.sleep(0.05)
        self.port = int(self.ready_file.read_text())
        if self.require_serving and self.health() != health_pb2.HealthCheckResponse.SERVING:
            raise RuntimeError("server wrote its port but health is not SERVING")
        return self

    def health(self, service: str = "") -> int:
        with self.channel() as ch:
            request = health_pb2.HealthCheckRequest(service=service)
            return health_pb2_grpc.HealthStub(ch).Check(request, timeout=5).status

    def channel(self) -> grpc.Channel:
        """A channel to the server, with the ClientTls given at construction (plaintext without)."""
        return open_channel(self.target, self.tls)

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM (graceful drain), then SIGKILL if it does not exit in time. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._tmp.cleanup()
