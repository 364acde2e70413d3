"""The request body off the wire, for both Score RPCs (rows and columns): one parse, one refusal.

Score and ScoreColumns register no request deserializer, so admission runs before any parsing and the
bytes reach the decode stage as they came. Bytes that are not the RPC's message are the caller's bad
input: INVALID_ARGUMENT with a short message, logged at most once per interval and never with a
traceback, whichever RPC they came to.
"""

from __future__ import annotations

import logging
from typing import TypeVar

from google.protobuf.message import Message

from serving.errors import InvalidRequest
from serving.security.throttled_log import ThrottledLog

M = TypeVar("M", bound=Message)

_bad_input = ThrottledLog(logging.getLogger("serving.pipeline.decode"), interval_s=10.0)


def parse_message(payload: bytes | M, message_type: type[M], method: str) -> M:
    """The `message_type` in `payload` (returned as is when already parsed); InvalidRequest naming the
    message type and the body's size when the bytes are not one."""
    if isinstance(payload, message_type):
        return payload
    name = message_type.DESCRIPTOR.full_name
    try:
        return message_type.FromString(payload)
    except Exception as exc:  # noqa: BLE001 - any failure to parse is the caller's bad input, never INTERNAL
        _bad_input.warning("undecodable", "undecodable request to %s: %d bytes are not a valid %s (%s)",
                           method, len(payload), name, type(exc).__name__)
        raise InvalidRequest(f"request body is not a valid {name} ({len(payload)} bytes)") from None
