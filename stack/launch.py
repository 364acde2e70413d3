"""`up`: start Redis, (Triton,) the replicas and the balancer, each health-checked; `down`: stop them all.

Order up: Redis (and the copy of the embedded cache), Triton, the replicas (started together, each waited on
until its gRPC health says SERVING), the balancer (waited on until a health call through it says SERVING).
Order down: the balancer first (no new calls reach the replicas), then the replicas (they drain), Triton, Redis.
`stack.json` is rewritten after each start, so a stack that failed half-way is stopped by the same `down`.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from embedding_cache.redis_local import free_port
from stack import balancer, procs, redis_nodes
from stack.config import StackAlreadyUp, StackConfig, StackError
from stack.state import (
    PASSWORD_FILE,
    ProcessRecord,
    StackState,
    new_password,
    read_password,
    read_state,
    remove_state,
    write_state,
)

SERVING = health_pb2.HealthCheckResponse.SERVING


def health(target: str, timeout_s: float = 2.0) -> int | None:
    """The gRPC health status of `target` (overall service ""), or None when it does not answer."""
    try:
        with grpc.insecure_channel(target) as ch:
            return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=timeout_s).status
    except grpc.RpcError:
        return None


def _wait_serving(record: ProcessRecord, deadline: float) -> None:
    while True:
        if not procs.alive(record):
            raise StackError(f"{record.name} (pid {record.pid}) exited during start-up; log {record.log}:\n"
                             f"{procs.log_tail(record.log)}")
        if health(record.target, timeout_s=1.0) == SERVING:
            return
        if time.monotonic() > deadline:
            raise StackError(f"{record.name} on {record.target} not SERVING in time; log {record.log}:\n"
                             f"{procs.log_tail(record.log)}")
        time.sleep(0.1)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _default_cache_dir(config: StackConfig) -> Path | None:
    if config.cache_dir is not None:
        return config.cache_dir
    beside = config.repository / ".." / "cache"  # the demo's layout: runs/demo/{model_repository,cache}
    return beside.resolve() if beside.is_dir() else None


def live_processes(state: StackState) -> list[ProcessRecord]:
    return [p for p in state.processes if procs.alive(p)]


def refuse_if_up(run_dir: Path) -> None:
    """StackAlreadyUp when a recorded process of the stack in `run_dir` is alive (checked before the
    rest of the configuration, so a second `up` says that first)."""
    current = read_state(run_dir.resolve())
    if current is None:
        return
    live = live_processes(current)
    if live:
        raise StackAlreadyUp(f"a stack is already up in {run_dir.resolve()} (balancer {current.target}, "
                             f"{len(live)} live processes): run `adrank down --run-dir {run_dir}` first")


def up(config: StackConfig, say=print) -> StackState:  # noqa: ANN001 - a print-like callable
    """Starts the stack and returns its state once every part is healthy. On any failure everything started so
    far is stopped again and StackError says which part failed (with its log's tail)."""
    run_dir = config.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    refuse_if_up(config.run_dir)
    if read_state(run_dir) is not None:  # a stale record: clear it
        down(run_dir, config.stop_timeout_s, say=lambda *_: None)
    port = config.port or free_port()
    if not _port_free(port):
        raise StackError(f"--port {port}: 127.0.0.1:{port} is in use; pass another --port (0 picks a free one)")
    balancer.executable(config.balancer)  # fail before starting anything when the balancer is missing
    state = StackState(run_dir=str(run_dir), balancer=config.balancer, port=port, redis=config.redis)
    write_state(run_dir, state)
    try:
        _start_all(config, run_dir, state, say)
    except BaseException:
        down(run_dir, config.stop_timeout_s, say=lambda *_: None)
        raise
    return state


def _record(run_dir: Path, state: StackState, record: ProcessRecord) -> None:
    state.processes.append(record)
    write_state(run_dir, state)


def _start_all(config: StackConfig, run_dir: Path, state: StackState, say) -> None:  # noqa: ANN001
    deadline = time.monotonic() + config.startup_timeout_s
    logs = run_dir / "logs"
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           # the balancer checks TCP, not gRPC health: `down` stops it first, so no drain delay is needed
           "ADRANK_DRAIN_DELAY_S": "0"}
    cache_dir = _default_cache_dir(config)

    if config.redis != "none":
        password = new_password(run_dir)
        state.redis_ports = redis_nodes.plan_ports(config.redis, config.redis_shards)
        for port in state.redis_ports:
            cmd = redis_nodes.write_node(run_dir, port, password, cluster=config.redis == "cluster")
            _, rec = procs.spawn(cmd, role="redis", name=f"redis-{port}", log=logs / f"redis-{port}.log", port=port)
            _record(run_dir, state, rec)
        for port in state.redis_ports:
            redis_nodes.wait_ping(port, password, max(1.0, deadline - time.monotonic()))
        if config.redis == "cluster":
            redis_nodes.create_cluster(state.redis_ports, password, max(5.0, deadline - time.monotonic()))
        url = redis_nodes.url(config.redis, state.redis_ports, password)
        say(f"redis ({config.redis}) on ports {state.redis_ports}; password in {run_dir / PASSWORD_FILE} (0600)")
        if cache_dir is not None:
            from stack.seed import copy_to_redis

            copied = copy_to_redis(cache_dir, url)
            say(f"copied {cache_dir} into redis: " + (", ".join(f"{k} ({v} rows)" for k, v in copied.items())
                                                    or "no published fm_version"))
        # the URL (with its password) reaches the replicas through their environment, never a command line
        env.update({"ADRANK_CACHE_BACKEND": "redis", "ADRANK_CACHE_LOCATION": url})
    elif cache_dir is not None:
        env.update({"ADRANK_CACHE_BACKEND": "embedded", "ADRANK_CACHE_LOCATION": str(cache_dir.resolve())})

    serve_common = ["--host", "127.0.0.1", "--repository", str(config.repository.resolve())]
    if config.model:
        serve_common += ["--model", config.model]
    if config.triton:
        from serving.triton import cli as triton_cli
        from serving.triton import launcher

        tdir = run_dir / "triton"
        state.triton_state_dir = str(tdir)  # recorded first: a crash before its pid is written still stops it
        write_state(run_dir, state)
        with contextlib.redirect_stdout(io.StringIO()) as out:  # its "next: adrank serve …" hint is not ours
            rc = triton_cli.main(["start", "--repository", str(config.repository.resolve()), "--state-dir",
                                  str(tdir), "--log-file", str(logs / "tritonserver.log"),
                                  "--timeout", str(max(10.0, deadline - time.monotonic()))])
        handle = launcher.status(tdir)
        if rc != 0 or handle is None:
            raise StackError(f"--triton: tritonserver did not start; log {logs / 'tritonserver.log'}:\n"
                             f"{out.getvalue()[-1000:]}")
        say(f"tritonserver on {handle.grpc_url} with models {list(handle.models)}")
        ticks = procs.start_ticks(handle.pid)
        _record(run_dir, state, ProcessRecord(role="triton", name="tritonserver", pid=handle.pid,
                                              start_ticks=ticks if ticks is not None else -1, log=handle.log_file,
                                              port=handle.grpc_port, metrics_port=handle.metrics_port))
        serve_common += ["--backend", "triton", "--triton-url", handle.grpc_url]

    replicas = []
    for i in range(config.replicas):
        port, metrics_port = free_port(), free_port()
        cmd = [sys.executable, "-m", "adrank", "serve", "--port", str(port), "--metrics-port", str(metrics_port),
               *serve_common]
        _, rec = procs.spawn(cmd, role="replica", name=f"replica-{i}", log=logs / f"replica-{i}.log", port=port,
                             metrics_port=metrics_port, env=env)
        _record(run_dir, state, rec)
        replicas.append(rec)
    for rec in replicas:
        _wait_serving(rec, deadline)
    say(f"{len(replicas)} replicas SERVING on " + ", ".join(r.target for r in replicas))

    cmd = balancer.command(config.balancer, run_dir, state.port, [r.port for r in replicas])
    _, rec = procs.spawn(cmd, role="balancer", name=config.balancer, log=logs / f"{config.balancer}.log",
                         port=state.port)
    _record(run_dir, state, rec)
    _wait_serving(rec, deadline)
    state.complete = True
    write_state(run_dir, state)


def down(run_dir: Path, timeout_s: float = 15.0, say=print) -> int:  # noqa: ANN001
    """Stops every process the stack recorded (balancer, replicas, Triton, Redis), removes the password, the
    Redis configs (they hold it) and stack.json; keeps the logs. Returns how many processes were running."""
    run_dir = run_dir.resolve()
    state = read_state(run_dir)
    if state is None:
        say(f"no stack recorded in {run_dir}")
        return 0
    stopped = 0
    for role in ("balancer", "replica", "triton", "redis"):
        records = state.of_role(role)
        if role == "triton" and state.triton_state_dir:
            from serving.triton import launcher

            # SIGINT (Triton's own drain), its shm files and record; the group SIGKILL below catches stragglers
            stopped += int(launcher.stop(state.triton_state_dir, timeout_s=timeout_s))
            procs.stop(records, timeout_s)
            continue
        stopped += len(procs.stop(records, timeout_s))
    left = live_processes(state)
    if left:
        raise StackError("processes still alive after SIGKILL: " + ", ".join(f"{p.name} pid {p.pid}" for p in left))
    (run_dir / PASSWORD_FILE).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "redis", ignore_errors=True)
    remove_state(run_dir)
    say(f"stack in {run_dir} stopped ({stopped} processes were running)")
    return stopped


__all__ = ["down", "health", "live_processes", "read_password", "up"]
