"""Locust gRPC user for the ranking API. Runs only inside `python -m locust -f loadtests/locustfile.py`.

Each call scores one pre-built request (Zipf-popular user, catalog ads, candidate count from
``--candidates``) and is reported to locust's statistics as request_type "grpc", name "Score".
``response_length`` is the number of candidates scored, so locust's "Average Content Size" column is
candidates per request and candidates/s = requests/s × that.

Custom options (also env vars): ``--catalog`` (ADRANK_LT_CATALOG), ``--candidates`` (ADRANK_LT_CANDIDATES,
``fixed:200`` | ``uniform:MIN:MAX`` | ``lognormal:MEDIAN:SIGMA:MIN:MAX``), ``--pool-size``, ``--zipf``,
``--user-rate`` (requests/s per user; 0 = closed loop), ``--latency-out`` (a .npz of every call:
start time, client ms, server ms, candidates, ok), ``--rpc-timeout``.
A step ramp for capacity search is read from ADRANK_LT_STEPS="U1,U2,...@SECONDS".

Example::

    python -m locust -f loadtests/locustfile.py --headless -u 8 -r 8 -t 20s --host 127.0.0.1:50051 \
        --catalog runs/demo/catalog.npz --candidates fixed:200
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import grpc
import grpc.experimental.gevent

grpc.experimental.gevent.init_gevent()  # before any channel: grpc's poller must cooperate with gevent

from locust import LoadTestShape, User, constant_throughput, events, task  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root, when run from elsewhere

from loadtests.workload import CandidateSpec, RequestPool  # noqa: E402
from models.catalog import load_catalog  # noqa: E402
from protos.adrank.v1 import ranking_pb2  # noqa: E402

SCORE_METHOD = "/adrank.v1.AdRanking/Score"
SCORE_COLUMNS_METHOD = "/adrank.v1.AdRanking/ScoreColumns"
_POOL: RequestPool | None = None
_CALLS: dict[str, list] = {"t_s": [], "client_ms": [], "server_ms": [], "candidates": [], "ok": [], "version": []}
_T0 = [time.time()]


@events.init_command_line_parser.add_listener
def _options(parser) -> None:
    parser.add_argument("--catalog", type=str, env_var="ADRANK_LT_CATALOG", default="", help="catalog.npz")
    parser.add_argument("--candidates", type=str, env_var="ADRANK_LT_CANDIDATES", default="fixed:200")
    parser.add_argument("--pool-size", type=int, env_var="ADRANK_LT_POOL_SIZE", default=1000)
    parser.add_argument("--zipf", type=float, env_var="ADRANK_LT_ZIPF", default=1.1)
    parser.add_argument("--user-rate", type=float, env_var="ADRANK_LT_USER_RATE", default=0.0)
    parser.add_argument("--latency-out", type=str, env_var="ADRANK_LT_LATENCY_OUT", default="")
    parser.add_argument("--wire", type=str, env_var="ADRANK_LT_WIRE", default="rows", choices=["rows", "columns"],
                        help="rows: Score; columns: ScoreColumns with the same candidates")
    parser.add_argument("--rpc-timeout", type=float, env_var="ADRANK_LT_RPC_TIMEOUT", default=5.0)


@events.test_start.add_listener
def _build_pool(environment, **_kw) -> None:
    global _POOL
    opts = environment.parsed_options
    if not opts.catalog:
        raise SystemExit("locustfile: --catalog is required")
    _POOL = RequestPool.build(load_catalog(opts.catalog), CandidateSpec.parse(opts.candidates),
                              size=opts.pool_size, zipf_exponent=opts.zipf, columns=opts.wire == "columns")
    _T0[0] = time.time()


@events.quitting.add_listener
def _dump(environment, **_kw) -> None:
    out = environment.parsed_options.latency_out if environment.parsed_options else ""
    if out:
        import numpy as np

        np.savez(out, t0_s=np.array([_T0[0]]), **{k: np.asarray(v) for k, v in _CALLS.items()})


class RpcFailure(Exception):
    """A failed Score call as locust's failure table shows it: status code and details."""


class ScoreUser(User):
    """One simulated ranking client with its own channel (so load spreads over connections)."""

    def on_start(self) -> None:
        opts = self.environment.parsed_options
        host = (self.host or "").removeprefix("grpc://").removeprefix("http://")
        self._channel = grpc.insecure_channel(host)
        self._columns = opts.wire == "columns"
        method, response = ((SCORE_COLUMNS_METHOD, ranking_pb2.ScoreColumnsResponse) if self._columns
                            else (SCORE_METHOD, ranking_pb2.ScoreResponse))
        self._score = self._channel.unary_unary(method, request_serializer=None,
                                                response_deserializer=response.FromString)
        self._timeout = opts.rpc_timeout
        token = os.environ.get("ADRANK_TOKEN", "").strip()  # a server checking tokens needs the 'score' scope
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._wait = constant_throughput(opts.user_rate) if opts.user_rate > 0 else None

    def wait_time(self) -> float:
        return self._wait(self) if self._wait else 0.0

    def on_stop(self) -> None:
        self._channel.close()

    @task
    def score(self) -> None:
        payload, n = _POOL.next()
        t_wall = time.time()
        t0 = time.perf_counter()
        exc, server_ms, scored, version = None, float("nan"), 0, 0
        try:
            resp = self._score(payload, timeout=self._timeout, metadata=self._metadata)
            server_ms = resp.timing.total_us / 1e3
            scored = resp.candidates.ad_id.length if self._columns else len(resp.candidates)
            version = resp.served_by.model_version
        except grpc.RpcError as err:  # one failure row per status code, not per debug string
            exc = RpcFailure(f"{err.code().name}: {err.details()}")
        ms = (time.perf_counter() - t0) * 1e3
        self.environment.events.request.fire(request_type="grpc", name="Score", response_time=ms,
                                             response_length=scored, exception=exc, context={"candidates": n})
        for key, value in (("t_s", t_wall - _T0[0]), ("client_ms", ms), ("server_ms", server_ms),
                           ("candidates", n), ("ok", exc is None), ("version", version)):
            _CALLS[key].append(value)


if os.environ.get("ADRANK_LT_STEPS"):

    class StepShape(LoadTestShape):
        """Users step through ADRANK_LT_STEPS (e.g. "1,2,4,8@6": 6 s each), then the test stops."""

        users_text, _, seconds_text = os.environ["ADRANK_LT_STEPS"].partition("@")
        steps = [int(u) for u in users_text.split(",")]
        step_s = float(seconds_text or 5)

        def tick(self):
            i = int(self.get_run_time() // self.step_s)
            if i >= len(self.steps):
                return None
            return self.steps[i], max(self.steps)  # spawn a step's users at once
