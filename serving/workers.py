"""`adrank serve --workers N`: N serving processes on one port, started, watched and drained as one unit.

One Python process scores on one core (one event loop; protobuf, numpy and onnxruntime calls hold
the GIL between them), so a server uses more cores only as more processes. Each worker is a whole
`serve_forever` — its own event loop, onnxruntime session and gRPC server — bound to the same port
with SO_REUSEPORT, so the kernel spreads incoming connections over them; a memory-mapped embedding
cache is shared through the page cache (each worker maps the same files).

The parent owns what must be one for the unit:

* the port: with `port` 0 it reserves a free one (a bound, never-listening SO_REUSEPORT socket) and
  hands that to every worker, so all of them bind the same one;
* readiness to the outside: `--ready-file` is written only once every worker is SERVING;
* metrics: workers write to a private PROMETHEUS_MULTIPROC_DIR (mode 0700, removed at exit) and the
  parent's `metrics_port` serves them added up (`adrank_worker_score_requests{worker=…}` tells them apart);
  the custom collectors (stage latency, the embedding cache's hit rate and staleness), which
  prometheus_client's multiprocess mode cannot see, reach the parent as one file per worker written
  twice a second (`serving.metrics.WorkerFamilies`), so they lag the counters by up to 0.5 s;
* drain: SIGTERM / SIGINT are forwarded to every worker, which all turn health NOT_SERVING at once and
  drain as a single server does (serving.server); the parent exits when they have, 0 when all did cleanly;
* failure: a worker that dies on its own takes the unit down (the others drain, exit code 1), so a
  balancer or supervisor sees one failed server rather than a port answering with fewer cores.

Workers die with the parent (PR_SET_PDEATHSIG), so a killed parent leaves no process behind.

Usage (what `adrank serve` does when `workers` resolves to more than one)::

    sys.exit(serve_workers(ServerConfig.from_env(workers=2), 2, ready_file="port"))
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

from serving.config import ServerConfig

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the parent's own shutdown still stops the workers
        pass


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """A bound (not listening) SO_REUSEPORT socket on `host`:`port` (0: a free port) and its port;
    held while workers run so no other program takes the port between their binds."""
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host.strip("[]"), port))
    return sock, sock.getsockname()[1]


class Workers:
    """The worker processes of one unit (see the module docstring)."""

    def __init__(self, config: ServerConfig, n: int) -> None:
        self.config, self.n = config, n
        self._tmp = Path(tempfile.mkdtemp(prefix="adrank-workers-"))  # 0700: metrics and ready files
        self.metrics_dir = self._tmp / "metrics"
        self.metrics_dir.mkdir(mode=0o700)
        self._reserved, self.port = reserve_port(config.host, config.port)
        self.procs: list[subprocess.Popen] = []

    def ready_path(self, i: int) -> Path:
        return self._tmp / f"worker-{i}.port"

    def start(self) -> None:
        """Starts every worker; each reads its config (the port fixed) from stdin."""
        payload = json.dumps(asdict(replace(self.config, port=self.port, workers=1))).encode()
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir)}
        for i in range(self.n):
            proc = subprocess.Popen([sys.executable, "-m", "serving.workers", str(i), str(self.ready_path(i))],
                                    stdin=subprocess.PIPE, env=env, preexec_fn=_die_with_parent)  # noqa: PLW1509
            proc.stdin.write(payload)
            proc.stdin.close()
            self.procs.append(proc)

    def wait_ready(self, timeout_s: float, stop: list[int]) -> str:
        """"" once every worker wrote its ready file, else why not (a worker exited, time ran out, a signal)."""
        deadline = time.monotonic() + timeout_s
        while not all(self.ready_path(i).exists() for i in range(self.n)):
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None:
                    return f"worker {i} exited with {proc.returncode} before it was serving"
            if stop:
                return f"{signal.Signals(stop[0]).name} before every worker was serving"
            if time.monotonic() > deadline:
                return f"workers not serving within {timeout_s:g} s"
            time.sleep(0.05)
        return ""

    def signal_all(self, sig: int) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(sig)

    def wait_all(self, timeout_s: float) -> list[int]:
        """Exit codes once every worker has exited; stragglers past `timeout_s` are killed (-9)."""
        deadline = time.monotonic() + timeout_s
        for proc in self.procs:
            try:
                proc.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                log.error("worker pid %d did not drain in %.0f s: killed", proc.pid, timeout_s)
                proc.kill()
                proc.wait()
        return [proc.returncode for proc in self.procs]

    def exited(self) -> tuple[int, int] | None:
        """(index, exit code) of a worker that has exited, if any."""
        for i, proc in enumerate(self.procs):
            if proc.poll() is not None:
                return i, proc.returncode
        return None

    def start_metrics(self) -> None:
        """The workers' metrics added up, on `metrics_port` (prometheus_client multiprocess mode)."""
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        from serving.metrics import WorkerFamilies

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.metrics_dir))
        WorkerFamilies(self.metrics_dir, registry=registry)  # custom collectors: stages, cache (serving.metrics)
        start_http_server(self.config.metrics_port, addr=self.config.host, registry=registry)

    def close(self) -> None:
        self._reserved.close()
        shutil.rmtree(self._tmp, ignore_errors=True)


def serve_workers(config: ServerConfig, n: int, *, ready_file: str | None = None,
                  startup_timeout_s: float = 120.0) -> int:
    """Runs `n` workers until SIGTERM / SIGINT (forwarded to them) or until one dies; returns the exit code."""
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda s, _f: received.append(s)) for sig in (signal.SIGTERM, signal.SIGINT)}
    workers = Workers(config, n)
    drain_s = config.drain_delay_s + config.drain_timeout_s + 10.0
    try:
        workers.start()
        why = workers.wait_ready(startup_timeout_s, received)
        if why:
            log.error("workers: %s; stopping the others", why)
            workers.signal_all(signal.SIGINT)
            workers.wait_all(drain_s)
            return 1
        if config.metrics_port is not None:
            workers.start_metrics()
        if ready_file:
            tmp = Path(ready_file + ".tmp")
            tmp.write_text(str(workers.port))
            tmp.replace(ready_file)
        log.info("serving on %s:%d with %d workers (pids %s)", config.host, workers.port, n,
                 ", ".join(str(p.pid) for p in workers.procs))
        while not received:
            dead = workers.exited()
            if dead is not None:
                log.error("worker %d exited with %d: draining the others and exiting", *dead)
                workers.signal_all(signal.SIGTERM)
                workers.wait_all(drain_s)
                return 1
            time.sleep(0.1)
        log.info("%s: forwarded to %d workers; waiting for them to drain", signal.Signals(received[0]).name, n)
        workers.signal_all(received[0])
        codes = workers.wait_all(drain_s)
        log.info("workers drained (exit codes %s)", codes)
        return 0 if all(c == 0 for c in codes) else 1
    finally:
        workers.signal_all(signal.SIGKILL)  # only ones still running after an error above
        workers.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _worker_main(argv: list[str]) -> int:
    """One worker: `python -m serving.workers INDEX READY_FILE`, its config as JSON on stdin."""
    from serving import busy_poll
    from serving.server import serve_forever

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s w{argv[0]} %(name)s: %(message)s")
    config = ServerConfig(**json.loads(sys.stdin.read()))
    busy_poll.run(serve_forever(config, ready_file=argv[1], worker=int(argv[0])), config.busy_poll_us)
    return 0


if __name__ == "__main__":
    raise SystemExit(_worker_main(sys.argv[1:]))
