"""Builds and runs the grpc.aio ranking server with health checking and reflection.

Health reports NOT_SERVING until the backend has loaded a model, SERVING after, and NOT_SERVING
again while draining on SIGTERM/SIGINT so load balancers stop routing before in-flight calls end.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from protos.adrank.v1 import ranking_pb2
from serving.backends.base import InferenceBackend
from serving.config import ServerConfig
from serving.security import bind_port, server_interceptors
from serving.service import AdRankingService

if TYPE_CHECKING:
    from serving.requestlog import RequestLogSink

log = logging.getLogger(__name__)
SERVICE_NAME = ranking_pb2.DESCRIPTOR.services_by_name["AdRanking"].full_name


def make_backend(config: ServerConfig) -> InferenceBackend:
    if config.backend == "embedded":
        from serving.backends.embedded import EmbeddedBackend

        return EmbeddedBackend(config.model_repository, intra_op_threads=config.intra_op_threads)
    if config.backend == "triton":
        from serving.backends.triton import TritonBackend

        return TritonBackend(config.triton_url, config.model_repository)
    raise ValueError(f"backend must be 'embedded' or 'triton', got {config.backend!r}")


class RankingServer:
    """Owns the grpc.aio server, the backend and the health servicer.

    Usage::

        server = RankingServer(ServerConfig(port=0, model_repository="runs/demo/model_repository"))
        port = await server.start()
        ...
        await server.stop()
    """

    def __init__(self, config: ServerConfig, backend: InferenceBackend | None = None) -> None:
        self.config = config
        self.backend = backend or make_backend(config)
        self.health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        from serving.history import HistoryProvider
        from serving.metrics import ServiceMetrics

        metrics = ServiceMetrics()  # the cache readers export their hit-rate and staleness into it too
        self.service = AdRankingService(config, self.backend, metrics,
                                        history=HistoryProvider(config.cache_backend, config.cache_location,
                                                                refresh_s=config.cache_refresh_s,
                                                                registry=metrics.registry))
        self.request_log: RequestLogSink | None = None
        if config.request_log:  # pyarrow is imported only by servers that log
            from serving.requestlog.recorder import attach_request_log

            self.request_log = attach_request_log(self.service, config)
        self._server: grpc.aio.Server | None = None
        self._refresher: asyncio.Task | None = None
        self.port: int | None = None

    async def _refresh_cache(self) -> None:
        history = self.service.history
        while True:
            await asyncio.sleep(history.refresh_s)
            await asyncio.to_thread(history.refresh)

    async def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            result = self.health.set(name, status)
            if asyncio.iscoroutine(result):
                await result

    async def start(self) -> int:
        opts = [("grpc.max_receive_message_length", self.config.max_message_bytes),
                ("grpc.max_send_message_length", self.config.max_message_bytes)]
        server = grpc.aio.server(options=opts, maximum_concurrent_rpcs=self.config.max_concurrent_rpcs,
                                 interceptors=server_interceptors(self.config))
        self.service.add_to_server(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        if self.config.reflection:
            reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port = bind_port(server, self.config)  # TLS / mutual TLS when configured
        await server.start()
        self._server = server
        await self.backend.start()
        for key, state in self.service.readiness().items():
            if state != "ready":
                log.warning("model %s loaded but not ready: %s", key, state)
        self._refresher = asyncio.create_task(self._refresh_cache())
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s on %s:%d via %s backend: %s", SERVICE_NAME, self.config.host, self.port,
                 self.backend.name, self.backend.models())
        return self.port

    async def stop(self, grace_s: float = 5.0) -> None:
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._refresher is not None:
            self._refresher.cancel()
        if self._server is not None:
            await self._server.stop(grace_s)
        if self.request_log is not None:  # after the last call: publishes every record of a served request
            await asyncio.to_thread(self.request_log.close)
        await self.backend.close()

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


async def serve_forever(config: ServerConfig, *, ready_file: str | None = None) -> None:
    """Runs until SIGTERM / SIGINT, then drains for `config.drain_grace_s`. Writes the bound port to
    `ready_file` once SERVING; exports metrics on `config.metrics_port` when set."""
    server = RankingServer(config)
    port = await server.start()
    if config.metrics_port is not None:
        start_http_server(config.metrics_port, addr=config.host, registry=server.service.metrics.registry)
    if ready_file:
        from pathlib import Path

        tmp = Path(ready_file + ".tmp")
        tmp.write_text(str(port))
        tmp.replace(ready_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining for up to %.1f s", config.drain_grace_s)
    await server.stop(config.drain_grace_s)
