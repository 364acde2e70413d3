"""Prometheus metrics of the ranking service (exposed on --metrics-port when given).

Most are prometheus_client metrics, which `adrank serve --workers N` adds up across processes through
its multiprocess directory. Two kinds are exported by custom collectors instead, at scrape time: the
per-stage latency histogram (`StageLatency`: plain counts updated once per request, cheaper than eight
`Histogram.observe` calls) and the embedding cache's hit-rate and staleness (embedding_cache.metrics).
prometheus_client's multiprocess mode cannot see custom collectors, so under --workers each worker
writes what they collect to a file beside the multiprocess files (`write_custom_families`, twice a
second and once more after draining) and the parent adds the files up (`WorkerFamilies`).
"""

from __future__ import annotations

import bisect
import json
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0)
# a stage takes from a few microseconds (route) to most of the request (infer): finer at the bottom
STAGE_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)


STAGES = ("decode", "validate", "route", "history", "features", "infer", "rank", "encode")
"""The pipeline's stages in order (serving.pipeline.STAGE_NAMES, which a test checks against this)."""


class ServingRegistry(CollectorRegistry):
    """A registry that remembers which of its collectors are custom ones (not prometheus_client
    metrics), so a worker can write what they collect for its parent (`write_custom_families`)."""

    def __init__(self) -> None:
        super().__init__()
        self.custom: list[Collector] = []

    def register(self, collector: Collector) -> None:
        super().register(collector)
        if not isinstance(collector, MetricWrapperBase):
            self.custom.append(collector)

    def unregister(self, collector: Collector) -> None:
        super().unregister(collector)
        if collector in self.custom:
            self.custom.remove(collector)


class StageLatency(Collector):
    """`adrank_stage_latency_seconds{stage=…}`: the text a prometheus_client Histogram with STAGE_BUCKETS
    exports, from plain per-stage bucket counts and sums that `record` updates once per request (under one
    lock: any thread may record)."""

    name = "adrank_stage_latency_seconds"
    documentation = ("Time per request pipeline stage (decode, validate, route, history, features, infer, "
                     "rank, encode)")

    def __init__(self, stages: Sequence[str], buckets: Sequence[float] = (), *,
                 registry: CollectorRegistry | None = None) -> None:
        self.stages = tuple(stages)
        self._bounds = [float(b) for b in (buckets or STAGE_BUCKETS)]
        self._counts = [[0] * (len(self._bounds) + 1) for _ in self.stages]  # the last: +Inf
        self._sums = [0.0] * len(self.stages)
        self._created = time.time()
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def record(self, seconds: Sequence[float]) -> None:
        """One request: `seconds[i]` is the time of stage i (a failed request records the stages it ran)."""
        bounds, counts, sums = self._bounds, self._counts, self._sums
        with self._lock:
            for i, value in enumerate(seconds):
                counts[i][bisect.bisect_left(bounds, value)] += 1  # bucket le >= value, as Histogram.observe
                sums[i] += value

    def describe(self) -> Iterable[Metric]:
        return [Metric(self.name, self.documentation, "histogram")]

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.utils import floatToGoString

        with self._lock:
            counts = [list(c) for c in self._counts]
            sums = list(self._sums)
        family = Metric(self.name, self.documentation, "histogram")
        les = [*map(floatToGoString, self._bounds), "+Inf"]
        for stage, stage_counts, total in zip(self.stages, counts, sums, strict=True):
            acc = 0
            for le, c in zip(les, stage_counts, strict=True):
                acc += c
                family.add_sample(self.name + "_bucket", {"stage": stage, "le": le}, acc)
            family.add_sample(self.name + "_count", {"stage": stage}, acc)
            family.add_sample(self.name + "_sum", {"stage": stage}, total)
            family.add_sample(self.name + "_created", {"stage": stage}, self._created)
        yield family


class ServiceMetrics:
    """One instance per server; a registry of its own so tests can run several servers in a process."""

    def __init__(self, registry: CollectorRegistry | None = None, *, worker: str = "0") -> None:
        self.registry = registry or ServingRegistry()
        self.requests = Counter("adrank_score_requests", "Score calls by outcome", ["model", "version", "code"],
                                registry=self.registry)
        # every label value below is from a closed set: a loaded model name or "unknown", a gRPC status
        # name, a stage name, a breaker state; never a string taken as is from a request
        self.latency = Histogram("adrank_score_latency_seconds", "Server-side Score latency, every outcome",
                                 ["model", "code"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.candidates = Counter("adrank_scored_candidates", "Candidates scored", ["model"], registry=self.registry)
        self.stage_latency = StageLatency(STAGES, registry=self.registry)
        self.degraded = Counter("adrank_degraded_requests", "Requests scored without user FM history", ["reason"],
                                registry=self.registry)
        self.deadline_expired = Counter("adrank_deadline_expired", "Requests dropped at a stage boundary because "
                                        "their deadline had passed (never scored)", ["stage"], registry=self.registry)
        self.rejected = Counter("adrank_admission_rejected", "Score calls refused by admission control",
                                registry=self.registry)
        # multiprocess modes apply only under `adrank serve --workers N` (PROMETHEUS_MULTIPROC_DIR set):
        # the parent's /metrics then adds the live workers' gauges up (or takes their max)
        self.in_flight = Gauge("adrank_score_in_flight", "Score calls admitted and not yet finished",
                               registry=self.registry, multiprocess_mode="livesum")
        self.cache_breaker = Gauge("adrank_cache_breaker_open", "1 while the embedding cache's circuit breaker is "
                                   "open or half-open (LoopFM requests scored with the prior)", registry=self.registry,
                                   multiprocess_mode="livemax")
        self.triton_breaker = Gauge("adrank_triton_breaker_open", "1 while Triton's circuit breaker is open or "
                                    "half-open (requests served by the embedded fallback)", registry=self.registry,
                                    multiprocess_mode="livemax")
        # label values: worker indices 0..workers-1, a closed set
        self.worker_requests = Counter("adrank_worker_score_requests", "Score calls answered (every outcome) by "
                                       "each serving process of `adrank serve --workers N`", ["worker"],
                                       registry=self.registry).labels(worker)
        # rollout arms: "live" | "canary" | "pinned" (serving.pipeline.context.ARMS) or "?" before route chose
        self.arm_requests = Counter("adrank_rollout_arm_requests", "Score calls by rollout arm and outcome",
                                    ["model", "arm", "code"], registry=self.registry)
        self.arm_latency = Histogram("adrank_rollout_arm_latency_seconds", "Server-side Score latency by rollout arm",
                                     ["model", "arm"], buckets=LATENCY_BUCKETS, registry=self.registry)


# ---------------------------------------------------------------- custom collectors across workers

CUSTOM_PREFIX = "custom-"  # custom-<worker>.json beside the multiprocess .db files (which it never matches)

RATIO_GAUGES: dict[str, tuple[str, str, float]] = {
    "adrank_cache_hit_rate": ("adrank_cache_user_hits_total", "adrank_cache_user_lookups_total", 1.0)}
"""Gauges that are a ratio of two counters: recomputed from the workers' summed counters (a mean of
ratios would weigh a worker that served ten lookups like one that served a million); the third value is
the gauge before any lookup, as the collector reports it. Other gauges take the largest worker's value
(the oldest snapshot age: what an alert on staleness should see)."""


def write_custom_families(registry: CollectorRegistry, directory: str | os.PathLike, worker: int) -> None:
    """What `registry`'s custom collectors collect now, written atomically as
    `<directory>/custom-<worker>.json` for the parent's `WorkerFamilies`."""
    families = []
    for collector in list(getattr(registry, "custom", ())):
        for family in collector.collect():
            families.append({"name": family.name, "type": family.type, "help": family.documentation,
                             "samples": [[s.name, s.labels, s.value] for s in family.samples]})
    path = Path(directory) / f"{CUSTOM_PREFIX}{worker}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(families))
    tmp.replace(path)


class WorkerFamilies(Collector):
    """The parent's view of every worker's custom collectors (files written by `write_custom_families`):
    counters and histograms added up sample by sample, ratio gauges recomputed (RATIO_GAUGES), other
    gauges the largest value. `_created` samples are left out, as prometheus_client's multiprocess
    collector leaves them out of the metrics it adds up."""

    def __init__(self, directory: str | os.PathLike, registry: CollectorRegistry | None = None) -> None:
        self.directory = Path(directory)
        if registry is not None:
            registry.register(self)

    def _read(self) -> list[list[dict]]:
        out = []
        for path in sorted(self.directory.glob(f"{CUSTOM_PREFIX}*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError):  # replaced while read: the next scrape reads the new one
                continue
        return out

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, tuple[str, str, dict[tuple, float]]] = {}
        for families in self._read():
            for fam in families:
                _, _, samples = merged.setdefault(fam["name"], (fam["type"], fam["help"], {}))
                for name, labels, value in fam["samples"]:
                    if name.endswith("_created"):
                        continue
                    key = (name, tuple(sorted(labels.items())))
                    if fam["type"] == "gauge":
                        samples[key] = max(samples.get(key, value), value)
                    else:
                        samples[key] = samples.get(key, 0.0) + value
        totals = {key: value for _, _, samples in merged.values() for key, value in samples.items()}
        for name, (kind, doc, samples) in merged.items():
            family = Metric(name, doc, kind)
            for (sample, labels), value in samples.items():
                if name in RATIO_GAUGES:
                    num, den, empty = RATIO_GAUGES[name]
                    n, d = totals.get((num, labels), 0.0), totals.get((den, labels), 0.0)
                    value = n / d if d else empty
                family.add_sample(sample, dict(labels), value)
            yield family
