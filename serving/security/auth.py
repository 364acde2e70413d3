"""Bearer-token authentication with scopes, as a grpc.aio server interceptor.

Tokens live in a file of sha256 digests, so the file (a Kubernetes Secret, a config volume) never holds
a usable secret: one line per token, `<sha256-hex of the token> <scope>[,<scope>...] <name>`, `#` starts
a comment. `adrank auth new-token` makes a token and its line; `adrank auth hash-token` hashes one read
from stdin. Each RPC needs one scope: AdRanking methods `score`, every other service `admin` (so the
rollout API is closed until a token carries it), health and reflection none (probes carry no secret).

A caller without a valid token gets UNAUTHENTICATED, one whose token lacks the scope PERMISSION_DENIED;
neither message, nor any log line, contains the token. The presented token's digest is compared with
every entry in constant time (`hmac.compare_digest`, no early exit), so response time says nothing
about which digests exist.

Usage::

    tokens = TokenTable.load("/etc/adrank/tokens")
    server = grpc.aio.server(interceptors=[TokenAuthInterceptor(tokens)])
    stub.Score(request, metadata=[("authorization", "Bearer " + token)])
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from serving.security.throttled_log import ThrottledLog

log = logging.getLogger(__name__)

SCOPES: tuple[str, ...] = ("score", "admin")
# Services a caller may use without a token: load balancers and kubelet probes carry none.
PUBLIC_SERVICES: frozenset[str] = frozenset({
    "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"})
SERVICE_SCOPES: dict[str, str] = {"adrank.v1.AdRanking": "score"}
DEFAULT_SCOPE = "admin"  # any other service: administration, closed unless a token says otherwise
METADATA_KEY = "authorization"
MAX_TOKEN_CHARS = 4096
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

_denials = ThrottledLog(log, interval_s=10.0)


class TokenFileError(ValueError):
    """The token file cannot be read or a line is malformed; the message names the line, never its content."""


def hash_token(token: str) -> str:
    """The digest a token file stores for `token`: sha256 of its UTF-8 bytes, lower-case hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def required_scope(method: str) -> str | None:
    """The scope `/package.Service/Method` needs; None for public services."""
    service = method.lstrip("/").rpartition("/")[0]
    if service in PUBLIC_SERVICES:
        return None
    return SERVICE_SCOPES.get(service, DEFAULT_SCOPE)


@dataclass(frozen=True)
class TokenEntry:
    digest: str
    scopes: frozenset[str]
    name: str


@dataclass(frozen=True)
class TokenTable:
    """The tokens the server accepts, as digests with their scopes and a name for logs."""

    entries: tuple[TokenEntry, ...]

    @classmethod
    def load(cls, path: str | Path, *, flag: str = "--auth-tokens (ADRANK_AUTH_TOKENS)") -> TokenTable:
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise TokenFileError(f"{flag}: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
        entries: list[TokenEntry] = []
        seen: set[str] = set()
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            where = f"{flag}: {path} line {number}"
            parts = line.split(maxsplit=2)
            if len(parts) != 3:
                raise TokenFileError(f"{where}: expected '<sha256-hex> <scope,scope> <name>'")
            digest, scopes_text, name = parts
            if not _HEX64.match(digest):
                raise TokenFileError(f"{where}: the first field must be 64 lower-case hex digits, the sha256 of "
                                     "the token (adrank auth hash-token); never the token itself")
            scopes = frozenset(s for s in scopes_text.split(",") if s)
            unknown = sorted(scopes - set(SCOPES))
            if not scopes or unknown:
                raise TokenFileError(f"{where}: scopes must be among {', '.join(SCOPES)}; got {unknown or 'none'}")
            if digest in seen:
                raise TokenFileError(f"{where}: the same token digest appears twice")
            seen.add(digest)
            entries.append(TokenEntry(digest, scopes, name))
        if not entries:
            raise TokenFileError(f"{flag}: {path} holds no token (every caller would be refused)")
        return cls(tuple(entries))

    def match(self, token: str) -> TokenEntry | None:
        """The entry of `token`, comparing its digest with every entry's in constant time."""
        digest = hash_token(token)
        found = None
        for entry in self.entries:
            if hmac.compare_digest(entry.digest, digest):
                found = entry
        return found


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an `authorization: Bearer <token>` header, or None when absent or malformed."""
    for key, value in metadata or ():
        if key.lower() != METADATA_KEY:
            continue
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        scheme, _, token = text.strip().partition(" ")
        token = token.strip()
        if scheme.lower() == "bearer" and token and len(token) <= MAX_TOKEN_CHARS:
            return token
        return None
    return None


def denying_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that answers `code` without reading the request."""

    async def deny(_request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    async def deny_stream(_request: object, context: grpc.aio.ServicerContext):  # an async generator
        await context.abort(code, message)
        yield  # pragma: no cover - abort raises

    make = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}
    kind = (bool(handler.request_streaming), bool(handler.response_streaming))
    return make[kind](deny_stream if kind[1] else deny, request_deserializer=None,
                      response_serializer=handler.response_serializer)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls whose bearer token is missing, unknown or lacks the method's scope (see module doc)."""

    def __init__(self, tokens: TokenTable) -> None:
        self.tokens = tokens

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        scope = required_scope(method)
        handler = await continuation(handler_call_details)
        if scope is None or handler is None:  # public, or UNIMPLEMENTED anyway
            return handler
        token = bearer_token(handler_call_details.invocation_metadata)
        entry = self.tokens.match(token) if token is not None else None
        if entry is None:
            reason = "missing bearer token" if token is None else "invalid token"
            _denials.warning("unauthenticated", "refused %s: %s", method, reason)
            return denying_handler(handler, grpc.StatusCode.UNAUTHENTICATED,
                                   f"{reason}: send metadata 'authorization: Bearer <token>'")
        if scope not in entry.scopes:
            _denials.warning("permission_denied", "refused %s for token %r: lacks scope %r", method, entry.name, scope)
            return denying_handler(handler, grpc.StatusCode.PERMISSION_DENIED,
                                   f"token {entry.name!r} lacks scope {scope!r} needed by {method}")
        return handler
