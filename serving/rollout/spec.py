"""The rollout spec: what an operator writes to roll a version out, parsed from TOML and validated.

Named after Flagger's analysis fields where they mean the same thing (`interval`, `threshold`,
`stepWeight`, `maxWeight`, webhooks by phase). Every error is a `SpecError` whose `field` is the dotted
path of the offending key (`checks.max_psi`, `webhooks[1].url`), and unknown keys are errors too, so a
typo cannot silently leave a guardrail at its default.

    spec = load_spec("deploy/rollout-example.toml")
    spec.steps            # (10.0, 50.0): canary weights, the last one before promotion

An example with every field is in deploy/rollout-example.toml; docs/rollouts.md explains each check.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from serving.rollout.errors import SpecError
from serving.rollout.preflight import PreflightLimits

PHASES: tuple[str, ...] = ("pre-rollout", "step", "promotion")
"""When webhooks run: before any traffic moves, at every analysis interval, before promotion."""


def _number(where: str, value: object, low: float, high: float, *, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise SpecError(where, f"expected a number, got {value!r}")
    if value < low or value > high or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise SpecError(where, f"must be within {bracket}{low}, {high}], got {value!r}")
    return float(value)


def _int(where: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(where, f"expected an integer, got {value!r}")
    if not low <= value <= high:
        raise SpecError(where, f"must be within [{low}, {high}], got {value!r}")
    return value


def _bounds(where: str, value: object, low: float, high: float) -> tuple[float, float]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise SpecError(where, f"expected [low, high], got {value!r}")
    lo, hi = (_number(f"{where}[{i}]", v, low, high) for i, v in enumerate(value))
    if lo >= hi:
        raise SpecError(where, f"low must be below high, got {value!r}")
    return lo, hi


def _known(where: str, d: Mapping, cls: type) -> None:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise SpecError(prefix + unknown[0], f"unknown field; known fields are {', '.join(sorted(names))}")


@dataclass(frozen=True, kw_only=True)
class Webhook:
    """An HTTP endpoint POSTed a JSON payload at `phase`; any answer but 2xx (or no answer within
    `timeout_s`) is a veto: at pre-rollout the rollout does not start, later it counts as a failed check."""

    name: str
    url: str
    phase: str
    timeout_s: float = 5.0
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SpecError("webhook.name", f"must be a non-empty string, got {self.name!r}")
        if not isinstance(self.url, str) or not self.url.startswith(("http://", "https://")):
            raise SpecError("webhook.url", f"must be an http:// or https:// URL, got {self.url!r}")
        if self.phase not in PHASES:
            raise SpecError("webhook.phase", f"must be one of {', '.join(PHASES)}, got {self.phase!r}")
        _number("webhook.timeout_s", self.timeout_s, 0, 60, low_open=True)
        if not isinstance(self.metadata, Mapping) or not all(isinstance(v, str) for v in self.metadata.values()):
            raise SpecError("webhook.metadata", "must be a table of strings")


@dataclass(frozen=True, kw_only=True)
class Checks:
    """The guardrails evaluated on the canary arm against the live arm at every interval."""

    max_error_rate: float = 0.01
    """Canary calls that ended in an error, over all canary calls (Flagger's success rate >= 99%)."""
    max_p99_latency_ratio: float = 1.2
    """Canary p99 latency over live p99 latency in the same window."""
    max_psi: float = 0.2
    """Population stability index of the canary's p_ctr distribution against live's (0.1 drift, 0.25 shift)."""
    psi_bins: int = 10
    """Bins for the PSI, cut at live's quantiles so each holds about the same share of live scores."""
    p_ctr_ratio: tuple[float, float] = (0.9, 1.1)
    """Allowed range of mean canary p_ctr over mean live p_ctr."""
    calibration: tuple[float, float] = (0.8, 1.25)
    """Allowed range of the canary's calibration (mean predicted / observed CTR over its labelled
    impressions) over the live arm's; skipped until `min_labelled` impressions per arm have joined."""
    min_labelled: int = 200
    """Fewest labelled (joined) impressions per arm before calibration is judged: labels arrive late."""
    min_requests: int = 200
    """Fewest calls per arm in a window for it to be judged; a thinner window holds without counting."""

    def __post_init__(self) -> None:
        _number("checks.max_error_rate", self.max_error_rate, 0, 1)
        _number("checks.max_p99_latency_ratio", self.max_p99_latency_ratio, 1, 100)
        _number("checks.max_psi", self.max_psi, 0, 10, low_open=True)
        _int("checks.psi_bins", self.psi_bins, 2, 100)
        _bounds("checks.p_ctr_ratio", self.p_ctr_ratio, 0, 100)
        _bounds("checks.calibration", self.calibration, 0, 100)
        _int("checks.min_labelled", self.min_labelled, 1, 10**9)
        _int("checks.min_requests", self.min_requests, 1, 10**9)

    @classmethod
    def from_dict(cls, d: Mapping) -> Checks:
        _known("checks", d, cls)
        values = dict(d)
        for key in ("p_ctr_ratio", "calibration"):
            if key in values:
                values[key] = _bounds(f"checks.{key}", values[key], 0, 100)
        return cls(**values)


@dataclass(frozen=True, kw_only=True)
class Labels:
    """Where delayed labels come from: the `/metrics` page of `adrank monitor --serve-metrics`, whose
    `adrank_monitor_impressions`, `_clicks` and `_mean_p_ctr` gauges are per (model, version, arm) over
    the joined log of every replica. Read at every interval; a page that cannot be read skips the
    calibration check with the reason (it never fails a canary on its own)."""

    monitor_url: str
    timeout_s: float = 5.0
    hold_promotion: bool = True
    """At the last step, hold instead of promoting while calibration is skipped for want of labels, so a
    canary is never promoted before its delayed labels have been judged."""

    def __post_init__(self) -> None:
        if not isinstance(self.monitor_url, str) or not self.monitor_url.startswith(("http://", "https://")):
            raise SpecError("labels.monitor_url", f"must be an http:// or https:// URL, got {self.monitor_url!r}")
        _number("labels.timeout_s", self.timeout_s, 0, 60, low_open=True)
        if not isinstance(self.hold_promotion, bool):
            raise SpecError("labels.hold_promotion", f"expected true or false, got {self.hold_promotion!r}")


@dataclass(frozen=True, kw_only=True)
class RolloutSpec:
    """One rollout: which version, the canary weights in order, how often to judge, when to give up."""

    model: str
    version: int
    steps: tuple[float, ...]
    """Canary weights (percent of users), increasing; passing a window at the last one promotes."""
    interval_s: float = 60.0
    """Seconds between analysis windows (Flagger's `interval`)."""
    threshold: int = 3
    """Failed windows before rollback (Flagger's `threshold`); a rollout fails within threshold × interval."""
    salt: str | None = None
    """Canary hash salt; default "<model>/<version>". Change it to draw other users for a retried rollout."""
    checks: Checks = field(default_factory=Checks)
    webhooks: tuple[Webhook, ...] = ()
    preflight: PreflightLimits = field(default_factory=PreflightLimits)
    labels: Labels | None = None
    """The delayed-label source of the calibration check; None: calibration is skipped, saying so."""

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise SpecError("model", f"must be a non-empty model name, got {self.model!r}")
        _int("version", self.version, 1, 2**31 - 1)
        if not self.steps:
            raise SpecError("steps", "at least one canary weight is needed")
        for i, w in enumerate(self.steps):
            _number(f"steps[{i}]", w, 0, 100, low_open=True)
        if any(b <= a for a, b in zip(self.steps, self.steps[1:], strict=False)):
            raise SpecError("steps", f"weights must increase (stickiness needs it), got {list(self.steps)}")
        _number("interval_s", self.interval_s, 1, 24 * 3600)
        _int("threshold", self.threshold, 1, 1000)
        if self.salt is not None and (not isinstance(self.salt, str) or not self.salt):
            raise SpecError("salt", f"must be a non-empty string, got {self.salt!r}")
        names = [h.name for h in self.webhooks]
        if len(set(names)) != len(names):
            raise SpecError("webhooks", f"names must be unique, got {names}")

    @property
    def canary_salt(self) -> str:
        return self.salt or f"{self.model}/{self.version}"

    def hooks(self, phase: str) -> tuple[Webhook, ...]:
        return tuple(h for h in self.webhooks if h.phase == phase)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RolloutSpec:
        """From a parsed TOML document: `steps = [...]`, or `step_weight` with `max_weight` (Flagger's
        stepWeight/maxWeight: step_weight, 2 × step_weight, … up to max_weight)."""
        values = dict(d)
        allowed = {f.name for f in fields(cls)} | {"step_weight", "max_weight"}
        unknown = sorted(set(values) - allowed)
        if unknown:
            raise SpecError(unknown[0], f"unknown field; known fields are {', '.join(sorted(allowed))}")
        for key in ("model", "version"):
            if key not in values:
                raise SpecError(key, "is required")
        values["steps"] = _steps(values)
        if "checks" in values:
            if not isinstance(values["checks"], Mapping):
                raise SpecError("checks", "must be a table")
            values["checks"] = Checks.from_dict(values["checks"])
        if "preflight" in values:
            pre = values["preflight"]
            if not isinstance(pre, Mapping):
                raise SpecError("preflight", "must be a table")
            _known("preflight", pre, PreflightLimits)
            values["preflight"] = PreflightLimits(**pre)
        values["webhooks"] = tuple(_webhook(i, h) for i, h in enumerate(values.get("webhooks", ())))
        if values.get("labels") is not None:
            lab = values["labels"]
            if not isinstance(lab, Mapping):
                raise SpecError("labels", "must be a table")
            _known("labels", lab, Labels)
            if "monitor_url" not in lab:
                raise SpecError("labels.monitor_url", "is required")
            values["labels"] = Labels(**lab)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain values `from_dict` reads back (stored in the registry, so another replica can
        take the analysis over)."""
        d = asdict(self)
        d["steps"] = list(self.steps)
        d["checks"] = {k: list(v) if isinstance(v, tuple) else v for k, v in d["checks"].items()}
        d["webhooks"] = [{**h, "metadata": dict(h["metadata"])} for h in d["webhooks"]]
        return {k: v for k, v in d.items() if v is not None}


def _steps(values: dict[str, Any]) -> tuple[float, ...]:
    step, top = values.pop("step_weight", None), values.pop("max_weight", None)
    if "steps" in values:
        if step is not None or top is not None:
            raise SpecError("steps", "give either steps or step_weight with max_weight, not both")
        steps = values["steps"]
        if not isinstance(steps, list | tuple):
            raise SpecError("steps", f"expected a list of weights, got {steps!r}")
        return tuple(_number(f"steps[{i}]", w, 0, 100, low_open=True) for i, w in enumerate(steps))
    if step is None or top is None:
        raise SpecError("steps", "give steps = [..] or both step_weight and max_weight")
    step = _number("step_weight", step, 0, 100, low_open=True)
    top = _number("max_weight", top, step, 100)
    n = int(math.floor(top / step + 1e-9))
    out = [round(step * k, 6) for k in range(1, n + 1)]
    if out[-1] < top:
        out.append(top)
    return tuple(out)


def _webhook(i: int, d: object) -> Webhook:
    where = f"webhooks[{i}]"
    if not isinstance(d, Mapping):
        raise SpecError(where, "must be a table")
    _known(where, d, Webhook)
    try:
        return Webhook(**d)
    except SpecError as exc:
        raise SpecError(exc.field.replace("webhook", where, 1), exc.reason) from None
    except TypeError as exc:
        raise SpecError(where, str(exc)) from None


def parse_spec(text: str) -> RolloutSpec:
    """A spec from TOML text; SpecError names the field (or the line, for a TOML syntax error)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError("toml", str(exc)) from None
    try:
        return RolloutSpec.from_dict(doc)
    except TypeError as exc:  # a missing keyword of a nested table
        raise SpecError("spec", str(exc)) from None


def load_spec(path: str | Path) -> RolloutSpec:
    return parse_spec(Path(path).read_text())
