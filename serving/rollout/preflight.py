"""Preflight: the checks a candidate version must pass before any traffic moves to it.

Each refusal here would otherwise surface later and worse: missing FM embeddings as FAILED_PRECONDITION
on every canary request, stale embeddings as a quietly worse model, a different feature schema as
tensors built for another model, a failed export parity as scores that differ from the trained model,
and a worse offline NE as a rollout that analysis has to catch on live users. Every check runs, so an
operator sees all the reasons at once; `require_preflight` raises `PreflightRefused`
(FAILED_PRECONDITION) naming each failed check's fm_version or manifest field.

The cache is reached through an injected callable `open_cache(fm_version) -> CacheReader`, so the same
code runs against the server's embedded or Redis store, and tests against a real embedded store with a
few rows.

Usage::

    opener = lambda fm: open_reader("embedded", "runs/demo/cache", fm)
    report = require_preflight(candidate, live=live_manifest, open_cache=opener)
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from embedding_cache import CacheError, CacheReader
from exporters.manifest import ModelManifest
from models.features import FeatureSpec
from models.history import FM_HISTORY
from serving.rollout.errors import PreflightRefused, SpecError

Status = Literal["passed", "failed", "skipped"]
CacheOpener = Callable[[str], CacheReader]


@dataclass(frozen=True, kw_only=True)
class PreflightLimits:
    """The bounds a candidate is held to."""

    max_embedding_age_s: float | None = 6 * 3600.0
    """Newest FM code in the served snapshot (coverage.high_water_ms) at most this old; None: age unchecked."""
    max_parity_abs: float = 1e-4
    """Largest |exported − eager| output the export may have recorded (manifest parity.max_abs)."""
    max_ne_regression: float = 0.005
    """Relative offline NE increase allowed against live: 0.005 lets 0.800 become at most 0.804."""
    require_offline_ne: bool = True
    """Refuse a candidate that recorded no metrics.test.ctr_ne (otherwise: skipped)."""

    def __post_init__(self) -> None:
        age = self.max_embedding_age_s
        if age is not None and not (isinstance(age, int | float) and 0 < age < math.inf):
            raise SpecError("preflight.max_embedding_age_s", f"must be a positive number of seconds, got {age!r}")
        if not (isinstance(self.max_parity_abs, int | float) and 0 <= self.max_parity_abs < math.inf):
            raise SpecError("preflight.max_parity_abs", f"must be a finite number >= 0, got {self.max_parity_abs!r}")
        if not (isinstance(self.max_ne_regression, int | float) and 0 <= self.max_ne_regression < 1):
            raise SpecError("preflight.max_ne_regression", f"must be within [0, 1), got {self.max_ne_regression!r}")


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    status: Status
    message: str


@dataclass(frozen=True)
class PreflightReport:
    model: str
    version: int
    checks: tuple[CheckOutcome, ...]

    @property
    def passed(self) -> bool:
        return all(c.status != "failed" for c in self.checks)

    @property
    def failures(self) -> tuple[str, ...]:
        return tuple(f"{c.name}: {c.message}" for c in self.checks if c.status == "failed")

    def raise_if_refused(self) -> PreflightReport:
        if not self.passed:
            raise PreflightRefused(self.model, self.version, self.failures)
        return self

    def as_metrics(self) -> dict:
        """Outcomes as the audit log records them."""
        return {c.name: {"status": c.status, "message": c.message} for c in self.checks}


def reads_fm_history(manifest: ModelManifest) -> bool:
    """Whether serving must look FM codes up for this version (the same test the request path applies)."""
    return any(i.name == FM_HISTORY for i in manifest.inputs)


def check_embeddings(candidate: ModelManifest, open_cache: CacheOpener | None, now_ms: int,
                     limits: PreflightLimits) -> CheckOutcome:
    """The candidate's fm_version has a published snapshot, fresh enough, of the width and codec it reads."""
    name = "embeddings"
    if not reads_fm_history(candidate):
        return CheckOutcome(name, "skipped", "the version reads no FM history")
    fm = candidate.fm_version
    if open_cache is None:
        return CheckOutcome(name, "failed", f"fm_version {fm!r} is needed but no embedding cache is configured")
    try:
        reader = open_cache(fm)
    except CacheError as exc:
        return CheckOutcome(name, "failed", f"fm_version {fm!r} has no embeddings in the cache ({exc})")
    try:
        spec = {i.name: i for i in candidate.inputs}[FM_HISTORY]
        width = int(spec.shape[2])
        if reader.dim != width:
            return CheckOutcome(name, "failed", f"fm_version {fm!r}: inputs.fm_history width {width} differs from "
                                                f"the cache's dim {reader.dim} (snapshot {reader.snapshot_id})")
        codec = str(candidate.history.get("codec", ""))
        if codec and codec != reader.codec_name:
            return CheckOutcome(name, "failed", f"fm_version {fm!r}: history.codec {codec!r} differs from the "
                                                f"cache's {reader.codec_name!r} (snapshot {reader.snapshot_id})")
        if limits.max_embedding_age_s is None:
            return CheckOutcome(name, "passed", f"fm_version {fm!r}: snapshot {reader.snapshot_id} (age unchecked)")
        high_water = reader.coverage.get("high_water_ms")
        if high_water is None:
            return CheckOutcome(name, "failed", f"fm_version {fm!r}: snapshot {reader.snapshot_id} records no "
                                                "coverage.high_water_ms, so its freshness is unknown")
        age_s = (now_ms - int(high_water)) / 1000
        if age_s > limits.max_embedding_age_s:
            return CheckOutcome(name, "failed", f"fm_version {fm!r}: newest embeddings in snapshot "
                                                f"{reader.snapshot_id} are {age_s / 3600:.1f} h old; the bound is "
                                                f"{limits.max_embedding_age_s / 3600:.1f} h")
        return CheckOutcome(name, "passed", f"fm_version {fm!r}: snapshot {reader.snapshot_id}, newest code "
                                            f"{age_s / 60:.0f} min old")
    finally:
        reader.close()


def _canonical(d: Mapping) -> str:
    return json.dumps(d, sort_keys=True, default=str)


def check_feature_schema(candidate: ModelManifest, reference: Mapping | None, reference_name: str) -> CheckOutcome:
    """The candidate's feature spec is one this build assembles, and equals the reference field by field."""
    name = "feature_schema"
    try:
        FeatureSpec.from_dict(candidate.feature_spec)
    except (ValueError, KeyError, TypeError) as exc:
        return CheckOutcome(name, "failed", f"feature_spec: serving cannot build it ({exc})")
    if reference is None:
        return CheckOutcome(name, "passed", "feature_spec: buildable (no live version or serving spec to compare)")
    if _canonical(candidate.feature_spec) == _canonical(reference):
        return CheckOutcome(name, "passed", f"feature_spec: equal to {reference_name}'s")
    keys = sorted(set(candidate.feature_spec) | set(reference))
    diffs = [f"feature_spec.{k}: {candidate.feature_spec.get(k)!r} vs {reference.get(k)!r}" for k in keys
             if _canonical({k: candidate.feature_spec.get(k)}) != _canonical({k: reference.get(k)})]
    return CheckOutcome(name, "failed", f"differs from {reference_name}'s: " + "; ".join(diffs))


def check_parity(candidate: ModelManifest, limits: PreflightLimits) -> CheckOutcome:
    """The export recorded parity with the eager model, within the bound."""
    value = candidate.parity.get("max_abs")
    if value is None:
        return CheckOutcome("parity", "failed", "parity.max_abs: not recorded by the export")
    value = float(value)
    if not value <= limits.max_parity_abs:  # NaN fails
        return CheckOutcome("parity", "failed", f"parity.max_abs {value:.2e} exceeds the bound "
                                                f"{limits.max_parity_abs:.0e}")
    return CheckOutcome("parity", "passed", f"parity.max_abs {value:.2e} <= {limits.max_parity_abs:.0e}")


def offline_ne(manifest: ModelManifest) -> float | None:
    test = manifest.metrics.get("test")
    value = test.get("ctr_ne") if isinstance(test, Mapping) else None
    return None if value is None else float(value)


def check_offline_ne(candidate: ModelManifest, live: ModelManifest | None, limits: PreflightLimits) -> CheckOutcome:
    """The candidate's offline NE (lower is better) is not worse than live's beyond the relative bound.
    Both figures must come from comparable test sets; the exporter copies them from the training run."""
    name = "offline_ne"
    cand = offline_ne(candidate)
    if cand is None or not math.isfinite(cand):
        status: Status = "failed" if limits.require_offline_ne else "skipped"
        return CheckOutcome(name, status, f"metrics.test.ctr_ne: not recorded (got {cand!r})")
    if live is None:
        return CheckOutcome(name, "skipped", f"metrics.test.ctr_ne {cand:.4f}; no live version to compare with")
    ref = offline_ne(live)
    if ref is None or not math.isfinite(ref) or ref <= 0:
        return CheckOutcome(name, "skipped", f"live {live.version} recorded no usable metrics.test.ctr_ne ({ref!r})")
    change = cand / ref - 1
    text = (f"metrics.test.ctr_ne {cand:.4f} vs live {live.version}'s {ref:.4f} ({change:+.2%}; "
            f"the bound is +{limits.max_ne_regression:.2%})")
    return CheckOutcome(name, "failed" if change > limits.max_ne_regression else "passed", text)


def preflight(candidate: ModelManifest, *, live: ModelManifest | None = None, serving_spec: Mapping | None = None,
              open_cache: CacheOpener | None = None, now_ms: int | None = None,
              limits: PreflightLimits = PreflightLimits()) -> PreflightReport:
    """Every check's outcome for `candidate`. The schema is compared with `serving_spec` when given (what
    the request path builds), else with the live version's."""
    now = int(time.time() * 1000) if now_ms is None else int(now_ms)
    if serving_spec is not None:
        reference, ref_name = serving_spec, "serving"
    elif live is not None:
        reference, ref_name = live.feature_spec, f"live {live.version}"
    else:
        reference, ref_name = None, ""
    checks = (check_embeddings(candidate, open_cache, now, limits),
              check_feature_schema(candidate, reference, ref_name),
              check_parity(candidate, limits),
              check_offline_ne(candidate, live, limits))
    return PreflightReport(candidate.name, candidate.version, checks)


def require_preflight(candidate: ModelManifest, **kwargs: object) -> PreflightReport:
    """`preflight(...)`, raising PreflightRefused (FAILED_PRECONDITION) listing every failed check."""
    return preflight(candidate, **kwargs).raise_if_refused()  # type: ignore[arg-type]
