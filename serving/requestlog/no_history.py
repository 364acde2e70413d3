"""A sampled share of LoopFM traffic scored a second time with its FM history masked out.

Why: the transfer ratio — how much of what FM history is worth offline holds on live traffic — needs
two scores of the same served impressions, one with the user's FM history and one without, and the
labels that joined later. Offline the gap is measured on a test slice (`models.train`, the
`test_no_history` metrics in the model's manifest); online it is measured here: for a request in the
sample, the same model version is run again on the same candidates with its history mask all zeros —
the path the VM learned under FM-history dropout, the one a user without history takes — and both
score sets go into the request log row (`p_ctr_no_history`, `p_cvr_no_history`). `models.monitor`
computes the online NE gain from those rows once labels have joined.

Off the response path: the second inference is a task scheduled on the event loop after the response
has been built, never awaited by the request; the record waits for it and is then offered to the
sink. The model run goes through the backend's `infer_aside` (in process: a low-priority thread, the
event loop free meanwhile). At most `max_in_flight` run at once; a request over that, or one whose
second scoring fails, is logged without no-history scores and counted
(`adrank_transfer_samples_total{outcome}`). The sample is the request log's hash of the request id, so
with a rate at or below the log's every sampled request is also logged, and every replica and a replay
agree on which requests were sampled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import numpy as np
from prometheus_client import CollectorRegistry, Counter

from models.history import FM_HISTORY, history_tensors
from serving.backends.base import InferenceBackend, ModelHandle
from serving.history import needs_history
from serving.pipeline.features import model_inputs
from serving.pipeline.values import Ranking
from serving.requestlog.sink import sampled

log = logging.getLogger(__name__)
OUTCOMES = ("scored", "busy", "error")

Done = Callable[[np.ndarray | None, np.ndarray | None], None]
"""Called once per submitted request with (p_ctr, p_cvr) without history, or (None, None) when not scored."""


def no_history_inputs(ranking: Ranking) -> dict[str, np.ndarray]:
    """The model inputs of `ranking`'s request with the FM history masked out: every other tensor as
    served, the history codes zero and the mask all zeros (no valid code), as history dropout trains it."""
    handle, request = ranking.handle, ranking.request
    spec = {i.name: i for i in handle.manifest.inputs}[FM_HISTORY]
    length, width = int(spec.shape[1]), int(spec.shape[2])
    tensors = model_inputs(request, handle)
    tensors.update(history_tensors(np.zeros((1, length, width), np.float32), np.zeros(1, np.int64), length, width,
                                   np.zeros(len(request.ad_id), np.int64)))
    return tensors


class NoHistoryScorer:
    """Scores sampled LoopFM requests again without FM history, off the response path (module docstring)."""

    def __init__(self, backend: InferenceBackend, rate: float, *, max_in_flight: int = 32,
                 registry: CollectorRegistry | None = None) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"transfer_sample must be in [0, 1], got {rate}")
        self.backend, self.rate, self.max_in_flight = backend, rate, max_in_flight
        self._tasks: set[asyncio.Task] = set()
        self._warned = False
        counter = Counter("adrank_transfer_samples", "LoopFM requests sampled for a second scoring with FM history "
                          "masked out, by outcome (scored; busy: too many in flight; error)", ["outcome"],
                          registry=registry)
        self._count = {o: counter.labels(o) for o in OUTCOMES}

    def wants(self, request_id: str, handle: ModelHandle) -> bool:
        """Whether this request is in the sample and its model reads FM history (there is something to mask)."""
        return self.rate > 0.0 and sampled(request_id, self.rate) and needs_history(handle)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def submit(self, ranking: Ranking, done: Done) -> None:
        """Schedules the second scoring of `ranking`'s request; `done` gets its scores (or Nones)."""
        if len(self._tasks) >= self.max_in_flight:
            self._count["busy"].inc()
            done(None, None)
            return
        task = asyncio.get_running_loop().create_task(self._score(ranking, done))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _score(self, ranking: Ranking, done: Done) -> None:
        await asyncio.sleep(0)  # let the request that scheduled this finish first
        try:
            result = await self.backend.infer_aside(ranking.handle, no_history_inputs(ranking))
            p_ctr = np.asarray(result.p_ctr, np.float32).reshape(-1)
            p_cvr = np.asarray(result.p_cvr, np.float32).reshape(-1)
        except Exception:  # noqa: BLE001 - a failed second scoring loses only the no-history scores
            self._count["error"].inc()
            if not self._warned:
                self._warned = True
                log.exception("transfer sample: scoring without FM history failed (further failures are counted)")
            done(None, None)
            return
        self._count["scored"].inc()
        done(p_ctr, p_cvr)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Waits (up to `timeout_s`) for the second scorings in flight, so their records reach the sink."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
