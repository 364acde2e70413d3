"""Per-arm window statistics every replica publishes, and the pooled window the leading replica judges.

Why: behind a balancer each replica serves only its share of the canary's users, so a window judged on
one replica's traffic sees a fraction of the evidence (and one replica per rollout would have to be
reached by the admin call). Every replica therefore keeps, per model with a canary route, cumulative
counts since that canary appeared — calls, errors, a latency histogram, a histogram of served p_ctr and
its sum — and publishes them to the shared registry every poll with a time to live. The replica holding
the rollout's analysis lease sums them, subtracts what it had already judged (the baseline, stored with
the rollout so a successor starts where it stopped), and decides.

Histograms over fixed log-spaced edges merge by addition, which quantile samples do not: the pooled p99
is read from the latency histogram (bins 2% wide, so within 2% of the exact quantile), and the PSI uses
the p_ctr histogram, its fine bins merged into `psi_bins` bins at live's quantiles, as the single-replica
check cuts raw samples. Scores are histogrammed for every call up to `FULL_SCORE_CALLS` calls per arm,
then for a 1-in-`SCORE_STRIDE` subsample chosen by call count (never by score, so the histogram and the
mean stay unbiased).

    stats = ArmStats()
    stats.add(latency_ms=3.2, ok=True, p_ctr=np.array([0.01, 0.2]))
    window = pooled_window({"a": {"live": s1, "canary": s2}, "b": {...}}, baseline={}, psi_bins=10)
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from serving.rollout.analysis import ArmWindow, WindowMetrics

LATENCY_EDGES_MS = np.geomspace(0.01, 120_000.0, int(math.log(1.2e7) / math.log(1.02)) + 1)
"""Latency bin edges: 10 µs to 2 minutes, each bin 2% wider than the last (under- and overflow bins beside)."""
P_CTR_EDGES = np.geomspace(1e-6, 1.0, int(math.log(1e6) / math.log(1.05)) + 1)
"""p_ctr bin edges: 1e-6 to 1, 5% apart (p_ctr lives near 0, where linear bins would lump everything)."""
FULL_SCORE_CALLS = 2_000
SCORE_STRIDE = 20


def _bins(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Bin index per value: 0 below the first edge, len(edges) above the last."""
    return np.searchsorted(edges, values, side="right")


_LATENCY_EDGES = LATENCY_EDGES_MS.tolist()  # bisect on a list: the per-call lookup costs no numpy dispatch
N_LATENCY_BINS = len(LATENCY_EDGES_MS) + 1
N_P_CTR_BINS = len(P_CTR_EDGES) + 1


@dataclass(eq=False)
class ArmStats:
    """One arm's cumulative counts on one replica: dense histograms in memory (an add is a bin lookup and
    an increment), sparse [bin, count] pairs on the wire."""

    calls: int = 0
    errors: int = 0
    latency: np.ndarray = field(default_factory=lambda: np.zeros(N_LATENCY_BINS, np.int64))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(N_P_CTR_BINS, np.int64))
    score_sum: float = 0.0
    score_n: int = 0

    def add(self, latency_ms: float, ok: bool, p_ctr: np.ndarray | None = None) -> None:
        self.calls += 1
        self.errors += 0 if ok else 1
        self.latency[bisect.bisect_right(_LATENCY_EDGES, latency_ms)] += 1
        if p_ctr is not None and p_ctr.size:
            p = np.asarray(p_ctr, np.float64)
            if not np.isfinite(p).all():
                p = p[np.isfinite(p)]
            np.add.at(self.scores, _bins(P_CTR_EDGES, p), 1)
            self.score_sum += float(p.sum())
            self.score_n += int(p.size)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ArmStats) and (self.calls, self.errors, self.score_n) ==
                (other.calls, other.errors, other.score_n) and self.score_sum == other.score_sum
                and np.array_equal(self.latency, other.latency) and np.array_equal(self.scores, other.scores))

    def copy(self) -> ArmStats:
        return ArmStats(self.calls, self.errors, self.latency.copy(), self.scores.copy(), self.score_sum,
                        self.score_n)

    def wants_scores(self) -> bool:
        """Whether this call's scores should be histogrammed (decided by call count, before the call counts)."""
        return self.calls < FULL_SCORE_CALLS or self.calls % SCORE_STRIDE == 0

    def to_dict(self) -> dict:
        def sparse(a: np.ndarray) -> list[list[int]]:
            nz = np.flatnonzero(a)
            return [[int(b), int(a[b])] for b in nz]

        return {"calls": self.calls, "errors": self.errors, "latency": sparse(self.latency),
                "scores": sparse(self.scores), "score_sum": self.score_sum, "score_n": self.score_n}

    @classmethod
    def from_dict(cls, d: Mapping) -> ArmStats:
        def dense(pairs, n: int, what: str) -> np.ndarray:
            out = np.zeros(n, np.int64)
            for b, c in pairs:
                if not 0 <= int(b) < n or int(c) < 0:
                    raise ValueError(f"{what}: bin {b} count {c} outside [0, {n})")
                out[int(b)] = int(c)
            return out

        return cls(calls=int(d["calls"]), errors=int(d["errors"]),
                   latency=dense(d["latency"], N_LATENCY_BINS, "latency"),
                   scores=dense(d["scores"], N_P_CTR_BINS, "scores"),
                   score_sum=float(d["score_sum"]), score_n=int(d["score_n"]))

    def minus(self, earlier: ArmStats | None) -> ArmStats:
        """What was added since `earlier` (a snapshot of this same accumulator)."""
        if earlier is None or earlier.calls > self.calls:  # none, or not an earlier snapshot of this one
            return self
        return ArmStats(self.calls - earlier.calls, self.errors - earlier.errors,
                        np.maximum(self.latency - earlier.latency, 0), np.maximum(self.scores - earlier.scores, 0),
                        self.score_sum - earlier.score_sum, self.score_n - earlier.score_n)

    def plus(self, other: ArmStats) -> ArmStats:
        return ArmStats(self.calls + other.calls, self.errors + other.errors, self.latency + other.latency,
                        self.scores + other.scores, self.score_sum + other.score_sum, self.score_n + other.score_n)

    def p99_ms(self) -> float | None:
        """The 99th percentile latency, as the upper edge of the bin holding it (an over-estimate by < 2%)."""
        total = int(self.latency.sum())
        if total == 0:
            return None
        b = int(np.searchsorted(np.cumsum(self.latency), 0.99 * total, side="left"))
        return float(LATENCY_EDGES_MS[min(b, len(LATENCY_EDGES_MS) - 1)])

    def score_counts(self) -> np.ndarray:
        return self.scores


Snapshot = Mapping[str, Mapping[str, ArmStats]]
"""replica id → arm → cumulative stats."""


def coarse_bins(live: np.ndarray, canary: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge fine histogram bins into about `bins` groups holding equal shares of live's mass."""
    total = live.sum()
    if total <= 0:
        return live, canary
    group = np.minimum((np.cumsum(live) - live / 2) / total * bins, bins - 1).astype(np.int64)
    group = np.maximum.accumulate(group)
    return np.bincount(group, weights=live, minlength=bins), np.bincount(group, weights=canary, minlength=bins)


def pooled_window(current: Snapshot, baseline: Snapshot, psi_bins: int) -> tuple[WindowMetrics, dict]:
    """The window since `baseline`, summed over every replica in `current`, and per-replica call counts."""
    arms = {"live": ArmStats(), "canary": ArmStats()}
    per_replica = {}
    for replica, stats in sorted(current.items()):
        counted = {}
        for arm in arms:
            if arm in stats:
                delta = stats[arm].minus(baseline.get(replica, {}).get(arm))
                arms[arm] = arms[arm].plus(delta)
                counted[arm] = delta.calls
        per_replica[replica] = counted
    live, can = arms["live"], arms["canary"]
    lc, cc = coarse_bins(live.score_counts(), can.score_counts(), psi_bins)
    has_scores = live.score_n > 0 and can.score_n > 0

    def window(a: ArmStats, counts: np.ndarray) -> ArmWindow:
        return ArmWindow(requests=a.calls, errors=a.errors, p99_ms=a.p99_ms(),
                         score_counts=counts if has_scores else None,
                         mean_p_ctr=a.score_sum / a.score_n if a.score_n else None)

    return WindowMetrics(live=window(live, lc), canary=window(can, cc)), per_replica


def snapshot_to_dict(s: Snapshot) -> dict:
    return {r: {arm: st.to_dict() for arm, st in arms.items()} for r, arms in s.items()}


def snapshot_from_dict(d: Mapping) -> dict[str, dict[str, ArmStats]]:
    return {r: {arm: ArmStats.from_dict(st) for arm, st in arms.items()} for r, arms in d.items()}
