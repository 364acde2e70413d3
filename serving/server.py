"""Builds and runs the grpc.aio ranking server with health checking and reflection.

Health means ready. The names "" and `SERVICE_NAME` report SERVING only while a readiness check,
run every `readiness_interval_s`, finds a model version ready (its FM history readable) and no hard
dependency down without a fallback (Triton unreachable with `triton_fallback=fail`; the cache down with
`cache_fallback=fail`);
NOT_SERVING before the first model loads, while that is not so, and from the first moment of a drain.
`LIVENESS_NAME` says only that the process answers (SERVING from start to exit), so a liveness probe
does not restart a pod that is draining or waiting out a dependency's outage.

Drain (SIGTERM), matching deploy/README.md: health turns NOT_SERVING at once; the server keeps serving
for `drain_delay_s` so balancers watching health stop routing; then it stops accepting (new calls get
UNAVAILABLE before any work starts) and gives calls in flight `drain_timeout_s` to finish. SIGINT
(an operator's Ctrl-C) skips the delay.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from protos.adrank.v1 import ranking_pb2
from serving import busy_poll
from serving.backends.base import InferenceBackend, freeze_heap
from serving.config import ServerConfig
from serving.security import bind_port, server_interceptors
from serving.service import AdRankingService

if TYPE_CHECKING:
    from serving.requestlog import RequestLogSink
    from serving.requestlog.no_history import NoHistoryScorer
    from serving.rollout.runtime import RolloutRuntime

log = logging.getLogger(__name__)
SERVICE_NAME = ranking_pb2.DESCRIPTOR.services_by_name["AdRanking"].full_name
LIVENESS_NAME = "adrank.liveness"
"""Health name that is SERVING while the process answers, whatever its readiness (for liveness probes)."""
READY_NAMES = ("", SERVICE_NAME)


def make_backend(config: ServerConfig) -> InferenceBackend:
    if config.backend == "embedded":
        from serving.backends.embedded import EmbeddedBackend

        return EmbeddedBackend(config.model_repository, intra_op_threads=config.intra_op_threads)
    if config.backend == "triton":
        from serving.backends.triton import TritonBackend

        triton = TritonBackend(config.triton_url, config.model_repository)
        if config.triton_fallback == "fail":
            return triton
        from serving.backends.embedded import EmbeddedBackend
        from serving.backends.fallback import FallbackBackend
        from serving.breaker import CircuitBreaker

        embedded = EmbeddedBackend(config.model_repository, intra_op_threads=config.intra_op_threads)
        return FallbackBackend(triton, embedded,
                               CircuitBreaker(config.triton_breaker_failures, config.triton_breaker_cooldown_s))
    raise ValueError(f"backend must be 'embedded' or 'triton', got {config.backend!r}")


def make_rollout(config: ServerConfig, backend: InferenceBackend, service: AdRankingService) -> RolloutRuntime:
    """The rollout runtime `config.rollout_registry` names, wired in: its watcher is the route stage's
    router and its windows observe every Score outcome (docs/rollouts.md)."""
    from serving.pipeline.route import RouteStage, resolve
    from serving.pipeline.shadow import ShadowScorer
    from serving.rollout.runtime import RolloutRuntime
    from serving.rollout.watcher import RoutingWatcher

    location = config.rollout_registry
    if location.startswith(("redis://", "rediss://", "unix://")):
        from serving.rollout.redis_registry import RedisRegistry

        registry = RedisRegistry(location)
    else:
        from serving.rollout.sqlite_registry import SqliteRegistry

        registry = SqliteRegistry(location)
    open_cache = None
    if config.cache_backend != "none":
        from embedding_cache import open_reader

        def open_cache(fm_version: str):  # noqa: F811 - the preflight's reader of the configured cache
            return open_reader(config.cache_backend, config.cache_location, fm_version)
    router = RoutingWatcher(registry)
    admission = service.admission

    def busy() -> bool:  # mirrors give way once half the admission slots are taken
        return admission is not None and admission.in_flight * 2 >= admission.max_in_flight

    shadow = ShadowScorer(backend, service.history, router, busy=busy, registry=service.metrics.registry)
    runtime = RolloutRuntime(registry, backend, watcher=router, shadow_scorer=shadow, poll_s=config.rollout_poll_s,
                             unload_grace_s=config.rollout_unload_grace_s, open_cache=open_cache,
                             lease_s=config.rollout_lease_s,
                             newest_ready=lambda name: resolve(backend, service.history, name, None).version)
    service.pipeline = service.pipeline.replace(route=RouteStage(backend, service.history, router)).wrap(
        "infer", shadow.wrap)
    service.observers.append(runtime.observe)
    return runtime


class RankingServer:
    """Owns the grpc.aio server, the backend and the health servicer.

    Usage::

        server = RankingServer(ServerConfig(port=0, model_repository="runs/demo/model_repository"))
        port = await server.start()
        ...
        await server.stop()
    """

    def __init__(self, config: ServerConfig, backend: InferenceBackend | None = None, *,
                 worker: int | None = None) -> None:
        self.config = config
        self.worker = worker  # index among `adrank serve --workers N` processes (serving.workers); None: alone
        self.backend = backend or make_backend(config)
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        from serving.breaker import CircuitBreaker
        from serving.history import HistoryProvider
        from serving.metrics import ServiceMetrics

        # the cache readers export their hit-rate and staleness into it too
        metrics = ServiceMetrics(worker=str(worker or 0))
        breaker = CircuitBreaker(config.cache_breaker_failures, config.cache_breaker_cooldown_s)
        history = HistoryProvider(config.cache_backend, config.cache_location, refresh_s=config.cache_refresh_s,
                                  cache_timeout_s=config.cache_timeout_ms / 1e3, fallback=config.cache_fallback,
                                  breaker=breaker, registry=metrics.registry)
        self.service = AdRankingService(config, self.backend, metrics, history=history)
        self.service.metrics.cache_breaker.set_function(lambda: 0.0 if breaker.is_closed else 1.0)
        triton_breaker = getattr(self.backend, "breaker", None)  # a FallbackBackend's (triton_fallback)
        if triton_breaker is not None:
            self.service.metrics.triton_breaker.set_function(lambda: 0.0 if triton_breaker.is_closed else 1.0)
        self.rollout: RolloutRuntime | None = None
        if config.rollout_registry:  # before the request log wraps stages: it keeps this route stage
            self.rollout = make_rollout(config, self.backend, self.service)
        self.request_log: RequestLogSink | None = None
        self.no_history: NoHistoryScorer | None = None  # the live transfer-ratio sample (request log on)
        if config.request_log:  # pyarrow is imported only by servers that log
            from serving.requestlog.recorder import attach_request_log

            self.request_log, self.no_history = attach_request_log(self.service, config)
        self._server: grpc.aio.Server | None = None
        self._refresher: asyncio.Task | None = None
        self._readiness: asyncio.Task | None = None
        self._gauges: asyncio.Task | None = None
        self.draining = False
        self.ready_status: int = health_pb2.HealthCheckResponse.NOT_SERVING
        self.not_ready_reason = "starting"
        self.port: int | None = None

    async def _refresh_cache(self) -> None:
        history = self.service.history
        while True:
            await asyncio.sleep(history.refresh_s)
            await asyncio.to_thread(history.refresh)

    async def _set_health(self, status: int, names: tuple[str, ...] = READY_NAMES) -> None:
        for name in names:
            result = self.health.set(name, status)
            if asyncio.iscoroutine(result):
                await result

    async def check_ready(self) -> str:
        """"" when the server can score, else why not (a readiness check; may touch the cache)."""
        history = self.service.history
        if not await self.backend.ready():
            return f"{self.backend.name} backend is not ready (unreachable) and no fallback is configured"
        if history.cache_down_without_fallback:
            return "embedding cache is down and cache_fallback is 'fail'"
        states = await asyncio.to_thread(self.service.readiness)  # opening a cache reader is I/O
        if not any(state == "ready" for state in states.values()):
            return f"no model version is ready: {states or 'none loaded'}"
        return ""

    async def _update_health(self) -> None:
        """Sets the ready names from one readiness check (never back to SERVING once draining)."""
        try:
            reason = await self.check_ready()
        except Exception as exc:  # noqa: BLE001 - a failing check means not ready, never a dead loop
            reason = f"readiness check failed: {exc}"
        serving = health_pb2.HealthCheckResponse.SERVING
        status = serving if not reason and not self.draining else health_pb2.HealthCheckResponse.NOT_SERVING
        if reason != self.not_ready_reason:
            (log.info if not reason else log.warning)("readiness: %s", reason or "ready")
        self.not_ready_reason = reason
        if not self.draining and status != self.ready_status:
            self.ready_status = status
            await self._set_health(status)

    async def _check_readiness_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.readiness_interval_s)
            await self._update_health()

    async def _sample_gauges_forever(self) -> None:
        """Under --workers the parent aggregates what workers write to the multiprocess directory, which
        callback gauges never do: their values are written there twice a second instead."""
        metrics, admission = self.service.metrics, self.service.admission
        breaker = self.service.history.breaker
        triton_breaker = getattr(self.backend, "breaker", None)  # a FallbackBackend's (triton_fallback)
        while True:
            if admission is not None:
                metrics.in_flight.set(admission.in_flight)
            metrics.cache_breaker.set(0.0 if breaker.is_closed else 1.0)
            if triton_breaker is not None:
                metrics.triton_breaker.set(0.0 if triton_breaker.is_closed else 1.0)
            self._write_custom_metrics()
            await asyncio.sleep(0.5)

    def _write_custom_metrics(self) -> None:
        """Under --workers: what the custom collectors (stage latency, cache hit rate and staleness) hold
        now, for the parent to add up (serving.metrics.write_custom_families)."""
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if self.worker is not None and directory:
            from serving.metrics import write_custom_families

            try:
                write_custom_families(self.service.metrics.registry, directory, self.worker)
            except OSError as exc:  # the parent removed the directory while exiting
                log.debug("custom metrics not written: %s", exc)

    async def begin_drain(self) -> None:
        """Health NOT_SERVING at once (calls keep being served): the first step of a drain."""
        self.draining = True
        self.ready_status = health_pb2.HealthCheckResponse.NOT_SERVING
        await self._set_health(self.ready_status)

    async def start(self) -> int:
        opts = [("grpc.max_receive_message_length", self.config.max_message_bytes),
                ("grpc.max_send_message_length", self.config.max_message_bytes)]
        if self.worker is not None:  # every worker listens on the same port; the kernel spreads connections
            opts.append(("grpc.so_reuseport", 1))
        server = grpc.aio.server(options=opts, maximum_concurrent_rpcs=self.config.max_concurrent_rpcs,
                                 interceptors=server_interceptors(self.config))
        self.service.add_to_server(server)
        if self.rollout is not None:
            from serving.rollout.admin import RolloutAdminService

            RolloutAdminService(self.rollout, auth_configured=bool(self.config.auth_tokens)).add_to_server(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if self.config.reflection:
            reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self._set_health(health_pb2.HealthCheckResponse.SERVING, (LIVENESS_NAME,))
        self.port = bind_port(server, self.config)  # TLS / mutual TLS when configured
        await server.start()
        self._server = server
        try:
            await self.backend.start()
            if self.rollout is not None:  # routing tables read and staged versions loaded before SERVING
                await self.rollout.start()
        except BaseException:  # a failed start stops its listener on this loop, so the error is what it reports
            self._server = None
            await server.stop(0)
            raise
        for key, state in self.service.readiness().items():
            if state != "ready":
                log.warning("model %s loaded but not ready: %s", key, state)
        self._refresher = asyncio.create_task(self._refresh_cache())
        # What start loaded (modules, sessions, compiled kernels: ≈ 85k objects, whose full collection took
        # 56 ms on this host) leaves every later collection's walk, so none stalls the loop that long.
        freeze_heap()
        await self._update_health()
        self._readiness = asyncio.create_task(self._check_readiness_forever())
        if self.worker is not None:
            self._gauges = asyncio.create_task(self._sample_gauges_forever())
        log.info("serving %s on %s:%d via %s backend%s: %s", SERVICE_NAME, self.config.host, self.port,
                 self.backend.name, "" if self.worker is None else f" (worker {self.worker})", self.backend.models())
        return self.port

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stops accepting calls (new ones get UNAVAILABLE) and gives those in flight `grace_s`."""
        await self.begin_drain()
        for task in (self._refresher, self._readiness, self._gauges):
            if task is not None:
                task.cancel()
        if self._server is not None:
            await self._server.stop(grace_s)
        shadow = getattr(self.rollout, "shadow_scorer", None)
        if shadow is not None and self.request_log is not None:  # queued mirrors hold records not yet offered
            await shadow.drain()
        if self.no_history is not None:  # second scorings still running hold records not yet offered
            await self.no_history.drain()
        if self.request_log is not None:  # after the last call: publishes every record of a served request
            await asyncio.to_thread(self.request_log.close)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING, (LIVENESS_NAME,))
        self._write_custom_metrics()  # the calls served while draining count too
        if self.rollout is not None:
            await self.rollout.close()
        await self.backend.close()

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


async def serve_forever(config: ServerConfig, *, ready_file: str | None = None,
                        backend: InferenceBackend | None = None, worker: int | None = None) -> None:
    """Runs until SIGTERM / SIGINT, then drains (module docstring). Writes the bound port to
    `ready_file` once started; exports metrics on `config.metrics_port` when set. `backend` replaces
    the one `config` names (tests run a slowed model through the real process this way). `worker`:
    this process is one of `adrank serve --workers N` (serving.workers), whose parent serves the metrics."""
    from serving.jsonlog import configure

    configure(config.log_format)
    server = RankingServer(config, backend, worker=worker)
    busy_poll.register_metrics(server.service.metrics.registry)  # on --busy-poll-us only
    port = await server.start()
    if config.metrics_port is not None and worker is None:
        start_http_server(config.metrics_port, addr=config.host, registry=server.service.metrics.registry)
    if ready_file:
        from pathlib import Path

        tmp = Path(ready_file + ".tmp")
        tmp.write_text(str(port))
        tmp.replace(ready_file)
    stop = asyncio.Event()
    received: list[signal.Signals] = []
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda s=sig: (received.append(s), stop.set()))
    await stop.wait()
    await server.begin_drain()
    delay = config.drain_delay_s if received[0] == signal.SIGTERM else 0.0
    log.info("%s: health NOT_SERVING; serving %.1f s more, then %.1f s for calls in flight",
             received[0].name, delay, config.drain_timeout_s)
    await asyncio.sleep(delay)
    await server.stop(config.drain_timeout_s)
    log.info("drained; exiting")
