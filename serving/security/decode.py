"""Undecodable request bytes answer INVALID_ARGUMENT with a short message, not UNKNOWN with a traceback.

grpc.aio calls a method's request deserializer before the servicer sees anything, and an exception
there becomes UNKNOWN plus a logged traceback per request. This interceptor swaps each unary-request
handler's deserializer for one that returns an `Undecodable` marker instead of raising, and wraps the
behaviour so the marker is answered INVALID_ARGUMENT at once. Repeated bad input is logged through a
ThrottledLog (one line per interval, with a count), never a traceback. Servicers stay unchanged.

Usage::

    server = grpc.aio.server(interceptors=[DecodeGuardInterceptor()])
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from serving.security.throttled_log import ThrottledLog

log = logging.getLogger(__name__)
_bad_input = ThrottledLog(log, interval_s=10.0)


@dataclass(frozen=True)
class Undecodable:
    """Stands in for a request whose bytes did not parse."""

    type_name: str
    size: int
    error: str


def _type_name(deserializer: Callable[[bytes], object]) -> str:
    owner = getattr(deserializer, "__self__", None)  # Message.FromString is bound to its class
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", None) or getattr(owner, "__name__", None) or "request"


def guarded_deserializer(deserializer: Callable[[bytes], object]) -> Callable[[bytes], object]:
    """`deserializer`, returning an Undecodable instead of raising on bytes it cannot parse."""
    type_name = _type_name(deserializer)

    def load(data: bytes) -> object:
        try:
            return deserializer(data)
        except Exception as exc:  # noqa: BLE001 - any failure to parse is the caller's bad input
            return Undecodable(type_name, len(data), type(exc).__name__)

    return load


def _refuse_message(bad: Undecodable, method: str) -> str:
    _bad_input.warning("undecodable", "undecodable request to %s: %d bytes are not a valid %s (%s)",
                       method, bad.size, bad.type_name, bad.error)
    return f"request body is not a valid {bad.type_name} ({bad.size} bytes)"


def guard_handler(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """`handler` with a non-raising deserializer and an INVALID_ARGUMENT answer to undecodable bytes;
    streaming-request handlers (reflection) are returned unchanged."""
    if handler.request_streaming or handler.request_deserializer is None:
        return handler
    load = guarded_deserializer(handler.request_deserializer)
    if handler.response_streaming:
        inner_stream = handler.unary_stream

        # Same shape as the wrapped behaviour: grpc.aio treats an async generator (yields responses) and a
        # coroutine (writes them with context.write, as health's Watch does) differently.
        if inspect.isasyncgenfunction(inner_stream):
            async def stream_behavior(request: object, context: grpc.aio.ServicerContext):
                if isinstance(request, Undecodable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _refuse_message(request, method))
                async for item in inner_stream(request, context):
                    yield item
        else:
            async def stream_behavior(request: object, context: grpc.aio.ServicerContext):  # type: ignore[misc]
                if isinstance(request, Undecodable):
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _refuse_message(request, method))
                result = inner_stream(request, context)
                return await result if inspect.isawaitable(result) else result

        return grpc.unary_stream_rpc_method_handler(stream_behavior, request_deserializer=load,
                                                    response_serializer=handler.response_serializer)
    inner = handler.unary_unary

    async def behavior(request: object, context: grpc.aio.ServicerContext) -> object:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _refuse_message(request, method))
        result = inner(request, context)
        return await result if inspect.isawaitable(result) else result

    return grpc.unary_unary_rpc_method_handler(behavior, request_deserializer=load,
                                               response_serializer=handler.response_serializer)


class DecodeGuardInterceptor(grpc.aio.ServerInterceptor):
    """Applies `guard_handler` to every method's handler."""

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        return None if handler is None else guard_handler(handler, handler_call_details.method)
