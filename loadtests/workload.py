"""What a load-test user sends: Zipf-popular users, a candidate-count distribution, catalog ads.

Numpy + protobuf only (no locust, no gevent), so the runner, the benchmarks and unit tests share it.
Requests are built once into a pool of serialized messages: building 200 candidates in Python costs
more than the server spends scoring them, and on a small machine the load generator shares the CPUs
with the server, so per-call building would measure the client.

Usage::

    pool = RequestPool.build(load_catalog("runs/demo/catalog.npz"), CandidateSpec.parse("uniform:50:300"))
    payload, n_candidates = pool.next()
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from serving.client import RequestMix, build_request, to_columns

# Placements and devices with their traffic shares (models.vocab), bids jittered ±20% as auctions do.
LOAD_MIX = RequestMix(weighted=True, bid_jitter=0.2)


@dataclass(frozen=True)
class CandidateSpec:
    """How many candidates a request carries.

    ``fixed:N`` (or just ``N``), ``uniform:MIN:MAX`` (inclusive), ``lognormal:MEDIAN:SIGMA:MIN:MAX``
    (clipped to MIN..MAX).
    """

    kind: str
    low: int
    high: int
    median: float = 0.0
    sigma: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> CandidateSpec:
        parts = spec.strip().lower().split(":")
        try:
            if len(parts) == 1 or parts[0] == "fixed":
                n = int(parts[-1])
                out = cls("fixed", n, n)
            elif parts[0] == "uniform" and len(parts) == 3:
                out = cls("uniform", int(parts[1]), int(parts[2]))
            elif parts[0] == "lognormal" and len(parts) == 5:
                out = cls("lognormal", int(parts[3]), int(parts[4]), float(parts[1]), float(parts[2]))
            else:
                raise ValueError
        except ValueError:
            raise ValueError(f"--candidates: {spec!r} is not fixed:N, uniform:MIN:MAX or "
                             "lognormal:MEDIAN:SIGMA:MIN:MAX") from None
        if out.low < 1 or out.high < out.low:
            raise ValueError(f"--candidates: {spec!r} needs 1 <= MIN <= MAX")
        if out.kind == "lognormal" and (out.median <= 0 or out.sigma < 0):
            raise ValueError(f"--candidates: {spec!r} needs MEDIAN > 0 and SIGMA >= 0")
        return out

    def sample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        if self.kind == "fixed":
            return np.full(size, self.low, dtype=np.int64)
        if self.kind == "uniform":
            return rng.integers(self.low, self.high + 1, size=size)
        draw = rng.lognormal(np.log(self.median), self.sigma, size=size)
        return np.clip(np.rint(draw), self.low, self.high).astype(np.int64)

    def __str__(self) -> str:
        if self.kind == "fixed":
            return f"fixed:{self.low}"
        if self.kind == "uniform":
            return f"uniform:{self.low}:{self.high}"
        return f"lognormal:{self.median:g}:{self.sigma:g}:{self.low}:{self.high}"


def zipf_users(user_ids: np.ndarray, size: int, rng: np.random.Generator, exponent: float = 1.1) -> np.ndarray:
    """`size` user ids with P(rank k) ∝ k^-exponent over a random popularity order of `user_ids`."""
    order = rng.permutation(len(user_ids))
    p = 1.0 / np.arange(1, len(user_ids) + 1, dtype=np.float64) ** exponent
    return user_ids[order[rng.choice(len(user_ids), size=size, p=p / p.sum())]]


@dataclass
class RequestPool:
    """Serialized requests cycled in order; the order itself is the Zipf draw, so cycling keeps the mix."""

    payloads: list[bytes]
    n_candidates: list[int]
    user_ids: np.ndarray
    _i: int = 0

    @classmethod
    def build(cls, catalog: Mapping[str, np.ndarray], candidates: CandidateSpec, *, size: int = 1000, seed: int = 0,
              zipf_exponent: float = 1.1, request_time_ms: int | None = None,
              columns: bool = False) -> RequestPool:
        """`columns`: the payloads are ScoreColumnsRequests of the same candidates (for ScoreColumns)."""
        rng = np.random.default_rng(seed)
        t = int(catalog["max_ts_ms"][0]) + 1 if request_time_ms is None else request_time_ms
        users = zipf_users(np.asarray(catalog["user_id"]), size, rng, zipf_exponent)
        counts = candidates.sample(rng, size)
        reqs = [build_request(int(u), int(n), catalog, rng=rng, mix=LOAD_MIX, request_time_ms=t)
                for u, n in zip(users, counts, strict=True)]
        wire = [to_columns(r) if columns else r for r in reqs]
        return cls([r.SerializeToString() for r in wire], [len(r.candidates) for r in reqs], users)

    def next(self) -> tuple[bytes, int]:
        i = self._i % len(self.payloads)
        self._i += 1
        return self.payloads[i], self.n_candidates[i]
