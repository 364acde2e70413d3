"""The decode guard on an in-process grpc.aio server: garbage → INVALID_ARGUMENT, while unary calls and
both kinds of streaming behaviour (health's Watch writes with context.write) work unchanged."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from serving.security.decode import DecodeGuardInterceptor


async def _with_server(body) -> None:
    server = grpc.aio.server(interceptors=[DecodeGuardInterceptor()])
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await body(channel)
    finally:
        await server.stop(0)


def test_unary_and_streaming_calls_pass_and_garbage_is_invalid_argument() -> None:
    async def body(channel: grpc.aio.Channel) -> None:
        stub = health_pb2_grpc.HealthStub(channel)
        assert (await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)).status == \
            health_pb2.HealthCheckResponse.SERVING
        watch = stub.Watch(health_pb2.HealthCheckRequest(), timeout=5)
        first = await watch.read()
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        for method in ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"):
            raw = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await raw(b"\x0a\xff\xff\xff\xff\x0f", timeout=5)  # a length past the end
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert info.value.details() == "request body is not a valid grpc.health.v1.HealthCheckRequest (6 bytes)"

    asyncio.run(_with_server(body))
