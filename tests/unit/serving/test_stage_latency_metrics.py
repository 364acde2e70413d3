"""serving.metrics: the per-request stage histogram exports the text a prometheus_client Histogram gives
for the same observations, and the workers' custom collectors add up in the parent's view."""

from __future__ import annotations

import re
import threading

import numpy as np
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from serving.metrics import (
    STAGE_BUCKETS,
    STAGES,
    ServiceMetrics,
    ServingRegistry,
    StageLatency,
    WorkerFamilies,
    write_custom_families,
)
from serving.pipeline import STAGE_NAMES


def _without_created(text: bytes) -> str:
    return re.sub(r"(_created\{[^}]*\}) \S+", r"\1 T", text.decode())


def test_stages_are_the_pipeline_stages():
    assert STAGES == STAGE_NAMES


def test_stage_latency_text_equals_a_prometheus_histogram():
    rng = np.random.default_rng(0)
    # values on the bucket bounds too: "le" means <=, as Histogram.observe counts them
    values = [*STAGE_BUCKETS, *rng.exponential(0.001, 500).tolist(), 0.0, 5.0]
    reference_registry, ours_registry = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("adrank_stage_latency_seconds", StageLatency.documentation, ["stage"],
                          buckets=STAGE_BUCKETS, registry=reference_registry)
    ours = StageLatency(STAGES, registry=ours_registry)
    for k in range(0, len(values), 8):
        request = values[k:k + len(STAGES)]  # a short last request: a failed one records what ran
        for stage, v in zip(STAGES, request, strict=False):
            reference.labels(stage).observe(v)
        ours.record(request)
    reference.labels("encode")  # Histogram exports a child only once it exists: every stage here
    for stage in STAGES:
        reference.labels(stage)
    assert _without_created(generate_latest(ours_registry)) == _without_created(generate_latest(reference_registry))


def test_record_from_many_threads_loses_no_count():
    ours = StageLatency(STAGES)
    threads = [threading.Thread(target=lambda: [ours.record([1e-5] * 8) for _ in range(2000)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    registry = CollectorRegistry()
    registry.register(ours)
    assert registry.get_sample_value("adrank_stage_latency_seconds_count", {"stage": "infer"}) == 8000


class _Cache:
    """A custom collector shaped like embedding_cache.metrics.CacheMetrics."""

    def __init__(self, lookups: int, hits: int, age_ms: float, stale: list[int]) -> None:
        self.lookups, self.hits, self.age_ms, self.stale = lookups, hits, age_ms, stale

    def collect(self):
        labels, values = ["backend", "fm_version"], ["embedded", "fm1"]
        for name, v in (("adrank_cache_user_lookups", self.lookups), ("adrank_cache_user_hits", self.hits)):
            c = CounterMetricFamily(name, "d", labels=labels)
            c.add_metric(values, v)
            yield c
        h = HistogramMetricFamily("adrank_cache_staleness_ms", "d", labels=labels)
        h.add_metric(values, [("1000.0", self.stale[0]), ("+Inf", self.stale[1])], 10.0 * self.stale[1])
        yield h
        g = GaugeMetricFamily("adrank_cache_hit_rate", "d", labels=labels)
        g.add_metric(values, self.hits / self.lookups)
        yield g
        a = GaugeMetricFamily("adrank_cache_snapshot_age_ms", "d", labels=labels)
        a.add_metric(values, self.age_ms)
        yield a


def test_worker_files_add_up(tmp_path):
    for worker, cache in enumerate((_Cache(10, 9, 500.0, [3, 9]), _Cache(30, 3, 900.0, [1, 3]))):
        metrics = ServiceMetrics()
        assert isinstance(metrics.registry, ServingRegistry)
        metrics.registry.register(cache)
        metrics.stage_latency.record([0.001] * (worker + 7))
        write_custom_families(metrics.registry, tmp_path, worker)
    registry = CollectorRegistry()
    WorkerFamilies(tmp_path, registry=registry)
    labels = {"backend": "embedded", "fm_version": "fm1"}
    got = registry.get_sample_value
    assert got("adrank_cache_user_lookups_total", labels) == 40
    assert got("adrank_cache_user_hits_total", labels) == 12
    assert got("adrank_cache_hit_rate", labels) == 12 / 40  # from the summed counters, not a mean of 0.9 and 0.1
    assert got("adrank_cache_snapshot_age_ms", labels) == 900.0
    assert got("adrank_cache_staleness_ms_bucket", {**labels, "le": "+Inf"}) == 12
    assert got("adrank_cache_staleness_ms_sum", labels) == 120.0
    assert got("adrank_stage_latency_seconds_count", {"stage": "rank"}) == 2  # both workers ran rank
    assert got("adrank_stage_latency_seconds_count", {"stage": "encode"}) == 1  # one failed before encode
    assert got("adrank_stage_latency_seconds_created", {"stage": "rank"}) is None
