"""Freshness and hit-rate metrics of one reader, exported to Prometheus at scrape time.

Counters are plain Python numbers updated under a lock, and a custom collector turns them into
Prometheus families only when scraped. That keeps the request path free of prometheus-client calls
(each costs about a microsecond, comparable to a whole lookup) while a caller-provided registry still
sees `adrank_cache_*` metrics. The served-history kernel (kernels.py) counts its lookups itself, in
`kernel_counts`, an int64 array it adds to while holding the GIL; every reading adds both.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Iterator

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

# Staleness buckets (ms): 1 s ... 30 days.
STALENESS_BUCKETS_MS: tuple[float, ...] = (1e3, 1e4, 6e4, 6e5, 3.6e6, 2.16e7, 8.64e7, 6.048e8, 2.592e9)
STALENESS_BOUNDS_MS = np.array(STALENESS_BUCKETS_MS, np.int64)  # the same whole-ms bounds, for the kernel
STALENESS_BOUNDS_MS.flags.writeable = False
# kernel_counts layout (the served kernel indexes it with these): lookups, hits, fallbacks, staleness sum
# (ms), then one count per staleness bucket (len(STALENESS_BUCKETS_MS) + 1)
K_LOOKUPS, K_HITS, K_FALLBACKS, K_STALE_SUM, K_BUCKETS = range(5)


class CacheMetrics(Collector):
    """Hit rates, staleness (t minus the newest code used, ms) and snapshot age of one reader.

    Usage:
        registry = CollectorRegistry()
        reader = open_reader("embedded", root, fm_version="fm-v1", registry=registry)
        reader.metrics.hit_rate, reader.metrics.mean_staleness_ms, reader.metrics.snapshot_age_ms
    """

    def __init__(self, backend: str, fm_version: str, registry: CollectorRegistry | None = None) -> None:
        self.backend = backend
        self.fm_version = fm_version
        self._lock = threading.Lock()
        self._user_lookups = 0
        self._user_hits = 0
        self._fallbacks = 0
        self.kernel_counts = np.zeros(K_BUCKETS + len(STALENESS_BUCKETS_MS) + 1, np.int64)
        self.ad_lookups = 0
        self.ad_hits = 0
        self.refreshes = 0
        self.refresh_failures = 0
        self._staleness_sum_ms = 0.0
        self._bucket_counts = [0] * (len(STALENESS_BUCKETS_MS) + 1)
        self.snapshot_id = ""
        self.snapshot_created_ms = 0
        if registry is not None:
            registry.register(self)

    # -- recording (request path) --------------------------------------------------------------------
    def record_users(self, lengths: np.ndarray, newest_ts: np.ndarray, t: np.ndarray) -> None:
        """Count B user lookups; staleness is measured for users that had history."""
        has = lengths > 0
        hits = int(has.sum())
        stale = (t - newest_ts)[has] if hits else ()
        with self._lock:
            self._user_lookups += len(lengths)
            self._user_hits += hits
            self._fallbacks += len(lengths) - hits
            for s in stale.tolist() if hits else ():
                self._staleness_sum_ms += s
                self._bucket_counts[bisect.bisect_left(STALENESS_BUCKETS_MS, s)] += 1

    def record_request(self, staleness_ms: int | None, n_ads: int, n_ad_hits: int) -> None:
        """One `lookup` (one user, n_ads ads) in one update; staleness None means the user fell back."""
        with self._lock:
            self._user_lookups += 1
            self.ad_lookups += n_ads
            self.ad_hits += n_ad_hits
            if staleness_ms is None:
                self._fallbacks += 1
                return
            self._user_hits += 1
            self._staleness_sum_ms += staleness_ms
            self._bucket_counts[bisect.bisect_left(STALENESS_BUCKETS_MS, staleness_ms)] += 1

    def record_ads(self, hit: np.ndarray) -> None:
        n_hit = int(hit.sum())
        with self._lock:
            self.ad_lookups += len(hit)
            self.ad_hits += n_hit

    def record_snapshot(self, snapshot_id: str, created_ms: int) -> None:
        with self._lock:
            if self.snapshot_id and snapshot_id != self.snapshot_id:
                self.refreshes += 1
            self.snapshot_id = snapshot_id
            self.snapshot_created_ms = created_ms

    def record_refresh_failure(self) -> None:
        with self._lock:
            self.refresh_failures += 1

    # -- reading -----------------------------------------------------------------------------------
    @property
    def user_lookups(self) -> int:
        return self._user_lookups + int(self.kernel_counts[K_LOOKUPS])

    @property
    def user_hits(self) -> int:
        return self._user_hits + int(self.kernel_counts[K_HITS])

    @property
    def fallbacks(self) -> int:
        return self._fallbacks + int(self.kernel_counts[K_FALLBACKS])

    @property
    def staleness_sum_ms(self) -> float:
        return self._staleness_sum_ms + float(self.kernel_counts[K_STALE_SUM])

    @property
    def hit_rate(self) -> float:
        """Share of user lookups that found at least one code before t (1.0 before any lookup)."""
        return self.user_hits / self.user_lookups if self.user_lookups else 1.0

    @property
    def ad_hit_rate(self) -> float:
        return self.ad_hits / self.ad_lookups if self.ad_lookups else 1.0

    @property
    def mean_staleness_ms(self) -> float:
        return self.staleness_sum_ms / self.user_hits if self.user_hits else 0.0

    @property
    def snapshot_age_ms(self) -> int:
        """Wall-clock age of the snapshot being served."""
        return int(time.time() * 1000) - self.snapshot_created_ms if self.snapshot_created_ms else 0

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "backend": self.backend, "fm_version": self.fm_version, "snapshot_id": self.snapshot_id,
            "user_lookups": self.user_lookups, "hit_rate": self.hit_rate, "fallbacks": self.fallbacks,
            "ad_lookups": self.ad_lookups, "ad_hit_rate": self.ad_hit_rate,
            "mean_staleness_ms": self.mean_staleness_ms, "snapshot_age_ms": self.snapshot_age_ms,
            "refreshes": self.refreshes, "refresh_failures": self.refresh_failures,
        }

    # -- prometheus ----------------------------------------------------------------------------------
    def collect(self) -> Iterator:
        labels = ["backend", "fm_version"]
        values = [self.backend, self.fm_version]
        with self._lock:
            # one read of the kernel's counters (a copy), so every family of this scrape agrees
            kernel = self.kernel_counts.tolist()
            user_lookups = self._user_lookups + kernel[K_LOOKUPS]
            user_hits = self._user_hits + kernel[K_HITS]
            counters = {
                "adrank_cache_user_lookups": (user_lookups, "User history lookups."),
                "adrank_cache_user_hits": (user_hits, "User lookups that found history before t."),
                "adrank_cache_fallbacks": (self._fallbacks + kernel[K_FALLBACKS],
                                           "User lookups answered with the cold-start prior."),
                "adrank_cache_ad_lookups": (self.ad_lookups, "Candidate ad code lookups."),
                "adrank_cache_ad_hits": (self.ad_hits, "Candidate ads found."),
                "adrank_cache_refresh_failures": (self.refresh_failures, "Refreshes refused (corrupt/missing)."),
            }
            buckets = [a + b for a, b in zip(self._bucket_counts, kernel[K_BUCKETS:], strict=True)]
            stale_sum = self._staleness_sum_ms + kernel[K_STALE_SUM]
        for name, (value, doc) in counters.items():
            family = CounterMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            yield family
        cumulative, acc = [], 0
        for bound, count in zip([*map(str, STALENESS_BUCKETS_MS), "+Inf"], buckets, strict=True):
            acc += count
            cumulative.append((bound, acc))
        hist = HistogramMetricFamily("adrank_cache_staleness_ms", "t minus the newest code used (ms).", labels=labels)
        hist.add_metric(values, cumulative, stale_sum)
        yield hist
        hit = GaugeMetricFamily("adrank_cache_hit_rate", "Share of user lookups with history.", labels=labels)
        hit.add_metric(values, user_hits / user_lookups if user_lookups else 1.0)
        yield hit
        age = GaugeMetricFamily("adrank_cache_snapshot_age_ms", "Age of the served snapshot (ms).", labels=labels)
        age.add_metric(values, self.snapshot_age_ms)
        yield age
