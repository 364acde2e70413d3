"""Background Score traffic for rollout tests: one thread calling one real server in a loop, so every
analysis window sees calls on both arms while a test drives the rollout."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import grpc

from protos.adrank.v1 import ranking_pb2, ranking_pb2_grpc
from serving.client import build_request
from serving.process import ServerProcess


class ScoreLoop:
    """Calls `srv` with `users` distinct users' requests (20 candidates each, at the catalog's newest time),
    one every 10 ms, from construction until `close()` (or the end of a `with` block). Failed calls are
    counted in `failed`; `on_answer` sees every response."""

    def __init__(self, srv: ServerProcess, catalog, *, metadata: Sequence[tuple[str, str]], users: int = 64,
                 on_answer: Callable[[ranking_pb2.ScoreResponse], None] | None = None) -> None:
        ts = int(catalog["max_ts_ms"][0])
        self.requests = [build_request(u, 20, catalog, seed=u, request_time_ms=ts) for u in range(users)]
        self.srv, self.metadata, self.on_answer = srv, list(metadata), on_answer
        self.stop, self.failed = threading.Event(), 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with self.srv.channel() as ch:
            stub = ranking_pb2_grpc.AdRankingStub(ch)
            i = 0
            while not self.stop.is_set():
                try:
                    answer = stub.Score(self.requests[i % len(self.requests)], timeout=5, metadata=self.metadata)
                    if self.on_answer is not None:
                        self.on_answer(answer)
                except grpc.RpcError:
                    self.failed += 1
                i += 1
                time.sleep(0.01)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)

    def __enter__(self) -> ScoreLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
