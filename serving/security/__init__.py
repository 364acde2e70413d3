"""What stands between the network and the servicers: TLS on the port, token auth with scopes, and a
decoder that answers garbage bytes INVALID_ARGUMENT. See docs/security.md for flags and file formats.

Usage (what RankingServer.start does)::

    server = grpc.aio.server(interceptors=server_interceptors(config))
    port = bind_port(server, config)
"""

from __future__ import annotations

import grpc

from serving.config import ServerConfig
from serving.security.auth import TokenAuthInterceptor, TokenTable
from serving.security.decode import DecodeGuardInterceptor
from serving.security.tls import bind_port

__all__ = ["bind_port", "server_interceptors"]


def server_interceptors(config: ServerConfig) -> list[grpc.aio.ServerInterceptor]:
    """Auth first (an unauthenticated caller's bytes are never parsed), then the decode guard. Reads the
    token file once, now: a bad file fails start-up with a message naming --auth-tokens."""
    chain: list[grpc.aio.ServerInterceptor] = []
    if config.auth_tokens:
        chain.append(TokenAuthInterceptor(TokenTable.load(config.auth_tokens)))
    chain.append(DecodeGuardInterceptor())
    return chain
