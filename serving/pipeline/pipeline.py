"""The one function a Score request runs through: eight named stages, in order, each timed.

    decode → validate → route → history → features → infer → rank → encode

`Pipeline.run` calls each stage with the previous stage's output and the request's context, records
the stage's time in `ctx.timings` and (once per request, every stage that ran) in the
`adrank_stage_latency_seconds{stage=…}` histogram (serving.metrics.StageLatency), and
returns encode's ScoreResponse (ScoreColumnsResponse for a columnar request: decode and encode
read and write either wire format, every stage between sees the same values). Stages are plain
async callables (`Stage`), so one can be replaced or wrapped without touching the others — a
fallback backend, a shadow scorer, a request logger:

    recorded = []

    def recording(infer):
        async def stage(inputs, ctx):
            recorded.append(inputs.tensors)
            return await infer(inputs, ctx)
        return stage

    pipeline = Pipeline.build(config, backend, history).wrap("infer", recording)
    response = await pipeline.run(request_bytes, RequestContext.begin())

A stage raises a typed error (serving.errors) to stop the request; the transport maps it to a status.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol, TypeVar

from protos.adrank.v1 import ranking_pb2
from serving.backends.base import InferenceBackend
from serving.budget import DEADLINE
from serving.config import ServerConfig
from serving.errors import DeadlineExpired
from serving.history import HistoryProvider
from serving.metrics import ServiceMetrics
from serving.pipeline.admission import Admission
from serving.pipeline.context import RequestContext
from serving.pipeline.decode import DecodeStage, ScorePayload
from serving.pipeline.encode import EncodeStage
from serving.pipeline.features import FeaturesStage
from serving.pipeline.history import HistoryStage
from serving.pipeline.infer import InferStage
from serving.pipeline.rank import RankStage
from serving.pipeline.route import RouteStage
from serving.pipeline.validate import ValidateStage
from serving.pipeline.values import DecodedRequest, ModelInputs, ParsedRequest, Ranking, Route, Scores, WithHistory

Response = ranking_pb2.ScoreResponse | ranking_pb2.ScoreColumnsResponse
In = TypeVar("In", contravariant=True)
Out = TypeVar("Out", covariant=True)


class Stage(Protocol[In, Out]):
    """One step of the request: its input value and the request's context in, its output value out."""

    def __call__(self, value: In, ctx: RequestContext, /) -> Awaitable[Out]: ...


@dataclass(frozen=True)
class Stages:
    """The eight stages, in the order they run (the field order is the pipeline's order)."""

    decode: Stage[ScorePayload, DecodedRequest]
    validate: Stage[DecodedRequest, ParsedRequest]
    route: Stage[ParsedRequest, Route]
    history: Stage[Route, WithHistory]
    features: Stage[WithHistory, ModelInputs]
    infer: Stage[ModelInputs, Scores]
    rank: Stage[Scores, Ranking]
    encode: Stage[Ranking, Response]

    @classmethod
    def default(cls, config: ServerConfig, backend: InferenceBackend, history: HistoryProvider) -> Stages:
        """The stages `adrank serve` runs: rows in, `backend` inferring, FM history from `history`."""
        return cls(decode=DecodeStage(config), validate=ValidateStage(config), route=RouteStage(backend, history),
                   history=HistoryStage(history), features=FeaturesStage(), infer=InferStage(backend),
                   rank=RankStage(), encode=EncodeStage())


STAGE_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Stages))


class Pipeline:
    """Runs `stages` in order for one request at a time (many requests run concurrently, each with its
    own context). Immutable: `replace` and `wrap` return a new pipeline."""

    def __init__(self, stages: Stages, *, metrics: ServiceMetrics | None = None,
                 admission: Admission | None = None) -> None:
        self.stages, self.metrics, self.admission = stages, metrics, admission
        # one histogram update per request for all its stages, not one per stage (serving.metrics.StageLatency)
        self._record: Callable[[list[float]], None] | None = (metrics.stage_latency.record if metrics is not None
                                                               else None)
        self._chain: tuple[tuple[str, Stage[Any, Any]], ...] = tuple(
            (name, getattr(stages, name)) for name in STAGE_NAMES)

    @classmethod
    def build(cls, config: ServerConfig, backend: InferenceBackend, history: HistoryProvider | None = None, *,
              metrics: ServiceMetrics | None = None, admission: Admission | None = None) -> Pipeline:
        """The default stages over `backend` (and `history`; none: LoopFM models are refused)."""
        return cls(Stages.default(config, backend, history or HistoryProvider()), metrics=metrics,
                   admission=admission)

    def replace(self, **stages: Stage[Any, Any]) -> Pipeline:
        """A pipeline with the named stages swapped for others, e.g. `replace(infer=fallback_infer)`."""
        unknown = sorted(set(stages) - set(STAGE_NAMES))
        if unknown:
            raise ValueError(f"no stage named {', '.join(unknown)}; stages are {', '.join(STAGE_NAMES)}")
        return Pipeline(replace(self.stages, **stages), metrics=self.metrics, admission=self.admission)

    def wrap(self, name: str, wrapper: Callable[[Stage[Any, Any]], Stage[Any, Any]]) -> Pipeline:
        """A pipeline whose stage `name` is `wrapper(current stage)`; the wrapper decides when (and
        whether) to call the stage it wraps."""
        if name not in STAGE_NAMES:
            raise ValueError(f"no stage named {name!r}; stages are {', '.join(STAGE_NAMES)}")
        return self.replace(**{name: wrapper(getattr(self.stages, name))})

    async def run(self, payload: ScorePayload, ctx: RequestContext) -> Response:
        """Scores one request: every stage in order, each timed into `ctx.timings` and the histogram.

        Before each stage the deadline is checked: once it has passed the request stops there with
        DeadlineExpired (counted per stage in `adrank_deadline_expired`), so late work is never done."""
        admission = self.admission
        if admission is not None:
            await admission.admit(ctx)  # raises Overloaded (RESOURCE_EXHAUSTED) when the server is full
        clock, timings, deadline = time.perf_counter, ctx.timings, ctx.deadline
        DEADLINE.set(deadline)  # for backend calls below the stage signatures (serving.budget)
        value: Any = payload
        elapsed: list[float] = []
        try:
            for name, stage in self._chain:
                start = clock()
                if deadline is not None and start >= deadline:  # a stage boundary past the deadline
                    if self.metrics is not None:
                        self.metrics.deadline_expired.labels(name).inc()
                    raise DeadlineExpired(name, (start - deadline) * 1e3)
                value = await stage(value, ctx)
                timings[name] = seconds = clock() - start
                elapsed.append(seconds)
        finally:
            if admission is not None:
                admission.release(ctx)
            if self._record is not None and elapsed:
                self._record(elapsed)
        return value
