"""Prometheus metrics of the ranking service (exposed on --metrics-port when given)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0)
# a stage takes from a few microseconds (route) to most of the request (infer): finer at the bottom
STAGE_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0)


class ServiceMetrics:
    """One instance per server; a registry of its own so tests can run several servers in a process."""

    def __init__(self, registry: CollectorRegistry | None = None, *, worker: str = "0") -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter("adrank_score_requests", "Score calls by outcome", ["model", "version", "code"],
                                registry=self.registry)
        # every label value below is from a closed set: a loaded model name or "unknown", a gRPC status
        # name, a stage name, a breaker state; never a string taken as is from a request
        self.latency = Histogram("adrank_score_latency_seconds", "Server-side Score latency, every outcome",
                                 ["model", "code"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.candidates = Counter("adrank_scored_candidates", "Candidates scored", ["model"], registry=self.registry)
        self.stage_latency = Histogram("adrank_stage_latency_seconds", "Time per request pipeline stage "
                                       "(decode, validate, route, history, features, infer, rank, encode)",
                                       ["stage"], buckets=STAGE_BUCKETS, registry=self.registry)
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
