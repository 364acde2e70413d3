"""The transport floor: a grpc.aio server that answers Score and ScoreColumns with a pre-serialised
response of the right size, parsing nothing and computing nothing.

What a call to it costs a Python client is what gRPC, HTTP/2 and the client's own protobuf work cost
for this request and response size; `adrank bench fastpath` reports every real path as a ratio to
it (plus raw onnxruntime). Run by the bench in a child process, like the real server:

    python -m loadtests.floor_server ROWS_RESPONSE_FILE COLUMNS_RESPONSE_FILE [BUSY_POLL_US] PORT_FILE

With BUSY_POLL_US > 0 it runs on the same idle-polling event loop as `adrank serve --busy-poll-us`
(serving/busy_poll.py), so a busy-polled server is compared with a busy-polled floor.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import grpc

SERVICE = "adrank.v1.AdRanking"


async def serve(port_file: str, rows_response: bytes, columns_response: bytes) -> None:
    async def rows(_request: bytes, _context) -> bytes:
        return rows_response

    async def columns(_request: bytes, _context) -> bytes:
        return columns_response

    server = grpc.aio.server()
    handlers = {"Score": grpc.unary_unary_rpc_method_handler(rows),
                "ScoreColumns": grpc.unary_unary_rpc_method_handler(columns)}  # no (de)serializers: bytes as is
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    tmp = Path(port_file + ".tmp")
    tmp.write_text(str(port))
    tmp.replace(port_file)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(0)


if __name__ == "__main__":
    from serving import busy_poll

    rows_file, columns_file, *rest = sys.argv[1:]
    busy_us, port_file = (int(rest[0]), rest[1]) if len(rest) == 2 else (0, rest[0])
    busy_poll.run(serve(port_file, Path(rows_file).read_bytes(), Path(columns_file).read_bytes()), busy_us)
