"""Canary analysis, Flagger-style: every interval, judge the canary arm against the live arm, then step
the weight up, hold, promote, or roll back.

`advance(state, window)` is a pure function of the rollout state and one window's per-arm figures, so the
whole policy is testable without a server, a clock or a network; the controller supplies the windows and
applies the decisions to the registry. Checks go beyond errors and latency to the model's own behaviour:
the PSI of the p_ctr distribution and the ratio of mean predicted p_ctr catch a model that answers
quickly and without errors but scores differently from the one it replaces.

Policy: a window where any check (or step webhook) fails counts as a failed window; at `threshold` failed
windows, cumulative over the rollout, the canary is rolled back with the failed checks as the reason. A
window with every check passing steps the weight up, or promotes after the last step. A window with
fewer than `checks.min_requests` calls on either arm holds without counting: thin data proves nothing.

    state = AnalysisState(spec)                        # canary at spec.steps[0]
    decision = advance(state, WindowMetrics(live=ArmWindow.from_samples(...), canary=ArmWindow.from_samples(...)))
    decision.action, decision.weight, decision.reason  # ("step_up", 50.0, "all 5 checks passed")
    state = decision.state
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from serving.rollout.errors import RolloutError
from serving.rollout.spec import Checks, RolloutSpec

CheckStatus = Literal["passed", "failed", "skipped"]
Action = Literal["step_up", "hold", "promote", "rollback"]
PSI_FLOOR = 1e-4
"""Share given to an empty bin, so the PSI stays finite (a common convention; 1e-4 ≈ 'almost never')."""


@dataclass(frozen=True)
class ArmWindow:
    """One arm's traffic over one interval. Scores are a sample of served p_ctr (a reservoir is fine);
    `score_counts` is the alternative when only a histogram over shared edges is kept."""

    requests: int
    errors: int = 0
    p99_ms: float | None = None
    scores: np.ndarray | None = None
    score_counts: np.ndarray | None = None
    mean_p_ctr: float | None = None
    labeled: int = 0
    """Impressions whose delayed label has joined; 0 until the request log provides them."""
    clicks: int = 0
    predicted_clicks: float = 0.0
    """Sum of p_ctr over the labeled impressions."""

    def __post_init__(self) -> None:
        if self.requests < 0 or self.errors < 0 or self.errors > self.requests:
            raise ValueError(f"ArmWindow: need 0 <= errors <= requests, got errors={self.errors} "
                             f"requests={self.requests}")

    @classmethod
    def from_samples(cls, latencies_ms: Sequence[float] | np.ndarray, p_ctr: Sequence[float] | np.ndarray, *,
                     errors: int = 0, labels: Sequence[int] | np.ndarray | None = None) -> ArmWindow:
        """From raw per-call samples: one latency per call (errors included), the p_ctr of the scored calls,
        and optionally a 0/1 click label per p_ctr."""
        lat = np.asarray(latencies_ms, np.float64)
        scores = np.asarray(p_ctr, np.float64)
        p99 = float(np.percentile(lat, 99)) if lat.size else None
        mean = float(scores.mean()) if scores.size else None
        if labels is None:
            return cls(requests=int(lat.size), errors=errors, p99_ms=p99, scores=scores, mean_p_ctr=mean)
        y = np.asarray(labels, np.int64)
        if y.shape != scores.shape:
            raise ValueError(f"labels shape {y.shape} differs from p_ctr shape {scores.shape}")
        return cls(requests=int(lat.size), errors=errors, p99_ms=p99, scores=scores, mean_p_ctr=mean,
                   labeled=int(y.size), clicks=int(y.sum()), predicted_clicks=float(scores.sum()))


@dataclass(frozen=True)
class HookOutcome:
    """A webhook's answer for this window (see serving.rollout.webhooks)."""

    name: str
    phase: str
    allowed: bool
    message: str


@dataclass(frozen=True)
class WindowMetrics:
    live: ArmWindow
    canary: ArmWindow
    hooks: tuple[HookOutcome, ...] = ()
    """Step webhooks called for this window; a veto counts as a failed check."""
    labels_note: str = ""
    """Why the arms carry no labelled impressions (no label source in the spec, or it was unreadable);
    the calibration check is skipped with this message."""
    pooled: Mapping | None = None
    """Where the window's calls came from (per replica), recorded with the decision in the audit log."""


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: CheckStatus
    value: float | None
    bound: str
    message: str


@dataclass(frozen=True)
class AnalysisState:
    """Where a rollout stands: its spec, the current step (index into spec.steps), failed windows so far."""

    spec: RolloutSpec
    step: int = 0
    failed_windows: int = 0
    windows: int = 0
    phase: Literal["progressing", "promoted", "rolled_back"] = "progressing"

    @property
    def weight(self) -> float:
        """The canary weight in force (0 after rollback, 100 after promotion)."""
        return {"promoted": 100.0, "rolled_back": 0.0}.get(self.phase, self.spec.steps[self.step])

    @property
    def at_last_step(self) -> bool:
        return self.step == len(self.spec.steps) - 1


@dataclass(frozen=True)
class Decision:
    action: Action
    state: AnalysisState
    reason: str
    checks: tuple[CheckResult, ...] = field(default=())

    @property
    def weight(self) -> float:
        return self.state.weight

    def audit_metrics(self) -> dict:
        """What the audit log records as 'the metrics that decided it'."""
        out: dict = {c.name: {"status": c.status, "value": c.value, "bound": c.bound, "message": c.message}
                     for c in self.checks}
        out["failed_windows"] = self.state.failed_windows
        out["windows"] = self.state.windows
        return out


# -- statistics ---------------------------------------------------------------------------------------------
def psi(expected_counts: Sequence[float] | np.ndarray, actual_counts: Sequence[float] | np.ndarray) -> float:
    """Population stability index Σ (a − e) · ln(a / e) over bin shares; empty bins get PSI_FLOOR.

    >>> round(psi([50, 50], [50, 50]), 6)
    0.0
    """
    e = np.asarray(expected_counts, np.float64)
    a = np.asarray(actual_counts, np.float64)
    if e.shape != a.shape or e.ndim != 1 or e.size < 2:
        raise ValueError(f"psi needs two 1-D count vectors of one length >= 2, got {e.shape} and {a.shape}")
    if e.sum() <= 0 or a.sum() <= 0:
        raise ValueError("psi needs non-empty histograms")
    e = np.maximum(e / e.sum(), PSI_FLOOR)
    a = np.maximum(a / a.sum(), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def score_psi(live: np.ndarray, canary: np.ndarray, bins: int = 10) -> float:
    """PSI of canary scores against live scores, with bins cut at live's quantiles (equal-mass bins adapt
    to p_ctr living near 0, where fixed bins on [0, 1] would put everything in the first)."""
    live = np.asarray(live, np.float64)
    canary = np.asarray(canary, np.float64)
    inner = np.unique(np.quantile(live, np.linspace(0, 1, bins + 1)[1:-1]))
    edges = np.concatenate(([-np.inf], inner, [np.inf]))
    return psi(np.histogram(live, edges)[0], np.histogram(canary, edges)[0])


# -- checks -------------------------------------------------------------------------------------------------
def _ratio_check(name: str, value: float | None, low: float, high: float, what: str) -> CheckResult:
    bound = f"<= {high:g}" if low == 0 else f"[{low:g}, {high:g}]"
    if value is None:
        return CheckResult(name, "skipped", None, bound, f"{what}: no samples on one arm")
    ok = low <= value <= high
    verdict = ("<=" if ok else ">") if low == 0 else ("within" if ok else "outside")
    return CheckResult(name, "passed" if ok else "failed", value, bound,
                       f"{what} {value:.3f} {verdict} {bound.removeprefix('<= ')}")


def evaluate(checks: Checks, window: WindowMetrics) -> tuple[CheckResult, ...]:
    """Every check on one window, canary against live."""
    live, can = window.live, window.canary
    out = []
    rate = can.errors / can.requests if can.requests else 0.0
    ok = rate <= checks.max_error_rate
    out.append(CheckResult("error_rate", "passed" if ok else "failed", rate, f"<= {checks.max_error_rate:g}",
                           f"canary error rate {rate:.4f} ({can.errors}/{can.requests}) "
                           f"{'<=' if ok else '>'} {checks.max_error_rate:g}"))
    ratio = can.p99_ms / live.p99_ms if can.p99_ms is not None and live.p99_ms else None
    out.append(_ratio_check("p99_latency_ratio", ratio, 0.0, checks.max_p99_latency_ratio, "canary/live p99"))
    out.append(_psi_check(checks, live, can))
    mean_ratio = (can.mean_p_ctr / live.mean_p_ctr
                  if can.mean_p_ctr is not None and live.mean_p_ctr else None)
    out.append(_ratio_check("p_ctr_ratio", mean_ratio, *checks.p_ctr_ratio, "canary/live mean p_ctr"))
    out.append(_calibration_check(checks, live, can, window.labels_note))
    for h in window.hooks:
        out.append(CheckResult(f"webhook:{h.name}", "passed" if h.allowed else "failed", None, "2xx", h.message))
    return tuple(out)


def _psi_check(checks: Checks, live: ArmWindow, can: ArmWindow) -> CheckResult:
    bound = f"<= {checks.max_psi:g}"
    if live.scores is not None and can.scores is not None and live.scores.size and can.scores.size:
        value = score_psi(live.scores, can.scores, checks.psi_bins)
    elif live.score_counts is not None and can.score_counts is not None:
        value = psi(live.score_counts, can.score_counts)
    else:
        return CheckResult("psi", "skipped", None, bound, "no p_ctr samples or histograms on one arm")
    ok = value <= checks.max_psi
    return CheckResult("psi", "passed" if ok else "failed", value, bound,
                       f"PSI of p_ctr {value:.3f} {'<=' if ok else '>'} {checks.max_psi:g}")


def _calibration_check(checks: Checks, live: ArmWindow, can: ArmWindow, note: str = "") -> CheckResult:
    """Canary calibration (predicted / observed clicks over its labelled impressions) over live's.
    Against live, not against 1: position and selection effects bias every arm's observed CTR alike, so
    the ratio isolates what the canary's model changed."""
    low, high = checks.calibration
    bound = f"[{low:g}, {high:g}]"
    need = checks.min_labelled
    if note:
        return CheckResult("calibration", "skipped", None, bound, note)
    if can.labeled < need or live.labeled < need:
        return CheckResult("calibration", "skipped", None, bound,
                           f"waiting for delayed labels: canary {can.labeled}, live {live.labeled} labelled "
                           f"impressions joined (need {need} each)")
    if can.clicks == 0 or live.clicks == 0 or live.predicted_clicks <= 0:
        return CheckResult("calibration", "skipped", None, bound,
                           f"no clicks yet among labelled impressions (canary {can.clicks} of {can.labeled}, "
                           f"live {live.clicks} of {live.labeled})")
    can_cal, live_cal = can.predicted_clicks / can.clicks, live.predicted_clicks / live.clicks
    ratio = can_cal / live_cal
    ok = low <= ratio <= high
    return CheckResult("calibration", "passed" if ok else "failed", ratio, bound,
                       f"calibration canary/live {ratio:.3f} {'within' if ok else 'outside'} {bound} (canary "
                       f"{can_cal:.3f} over {can.labeled} labelled impressions, live {live_cal:.3f} over "
                       f"{live.labeled})")


def waiting_for_labels(checks: Sequence[CheckResult]) -> CheckResult | None:
    """The calibration check when it was skipped for want of labels (not for want of a source)."""
    return next((c for c in checks if c.name == "calibration" and c.status == "skipped"
                 and not c.message.startswith("no label source")), None)


# -- the state machine --------------------------------------------------------------------------------------
def advance(state: AnalysisState, window: WindowMetrics) -> Decision:
    """The decision for one analysis window, and the state after it."""
    if state.phase != "progressing":
        raise RolloutError(f"{state.spec.model}/{state.spec.version}: rollout already {state.phase}")
    spec = state.spec
    windows = state.windows + 1
    need = spec.checks.min_requests
    if window.canary.requests < need or window.live.requests < need:
        return Decision("hold", replace(state, windows=windows),
                        f"insufficient traffic: live {window.live.requests}, canary {window.canary.requests} calls "
                        f"(need {need} each); window not counted")
    results = evaluate(spec.checks, window)
    failed = [c for c in results if c.status == "failed"]
    if failed:
        count = state.failed_windows + 1
        why = "; ".join(c.message for c in failed)
        if count >= spec.threshold:
            return Decision("rollback", replace(state, windows=windows, failed_windows=count, phase="rolled_back"),
                            f"{count} of {spec.threshold} failed windows at weight {state.weight:g}: {why}", results)
        return Decision("hold", replace(state, windows=windows, failed_windows=count),
                        f"failed window {count} of {spec.threshold} at weight {state.weight:g}: {why}", results)
    passed = sum(c.status == "passed" for c in results)
    skipped = [c.name for c in results if c.status == "skipped"]
    note = f"{passed} checks passed" + (f" ({', '.join(skipped)} skipped)" if skipped else "")
    if state.at_last_step:
        waiting = waiting_for_labels(results) if spec.labels is not None and spec.labels.hold_promotion else None
        if waiting is not None:
            return Decision("hold", replace(state, windows=windows),
                            f"{note} at weight {state.weight:g}, the last step; promotion waits for calibration: "
                            f"{waiting.message}", results)
        return Decision("promote", replace(state, windows=windows, phase="promoted"),
                        f"{note} at weight {state.weight:g}, the last step", results)
    nxt = replace(state, windows=windows, step=state.step + 1)
    return Decision("step_up", nxt, f"{note}: weight {state.weight:g} → {nxt.weight:g}", results)


def veto_promotion(previous: AnalysisState, decision: Decision, hooks: Sequence[HookOutcome]) -> Decision:
    """Hold a `promote` decision that a promotion webhook vetoed: the canary stays at its last weight and
    the window does not count as failed (the gate waits, as Flagger's confirm-promotion does)."""
    vetoes = [h for h in hooks if not h.allowed]
    if decision.action != "promote" or not vetoes:
        return decision
    why = "; ".join(f"{h.name}: {h.message}" for h in vetoes)
    return Decision("hold", replace(previous, windows=decision.state.windows), f"promotion vetoed by {why}",
                    decision.checks)
