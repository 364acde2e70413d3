"""Delayed labels for the calibration check, read from the monitor that joins them.

Why the monitor's `/metrics` page and not the joined files: labels arrive hours after serving and are
joined over the request logs of every replica (`adrank logs join`), so a calibration figure exists only
where that join runs; `adrank monitor --serve-metrics` already exports it per (model, version, arm), and
the analysis — on whichever replica leads it, on whichever host — needs nothing but an HTTP GET, no path
into another host's files, and one definition of calibration for dashboards and guardrails alike.

The page is parsed with prometheus_client's own text parser. Only three gauges are read:
`adrank_monitor_impressions`, `adrank_monitor_clicks` and `adrank_monitor_mean_p_ctr`, which give each
arm's labelled impressions, observed clicks and predicted clicks (impressions × mean p_ctr).

    counts = read_monitor(spec.labels, "vm", {"live": 1, "canary": 2})
    counts["canary"].impressions, counts["canary"].clicks, counts["canary"].predicted_clicks
"""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, replace

from serving.rollout.analysis import WindowMetrics
from serving.rollout.errors import RolloutError
from serving.rollout.spec import Labels, RolloutSpec

MAX_PAGE_BYTES = 16 << 20
"""A monitor page larger than this is refused (one series per model version and arm is a few kB)."""


class LabelSourceError(RolloutError):
    """The label source could not be read; the calibration check is skipped with this message."""


@dataclass(frozen=True)
class LabelCounts:
    """One arm's joined impressions: how many, the clicks observed, the clicks its p_ctr predicted."""

    impressions: int = 0
    clicks: int = 0
    predicted_clicks: float = 0.0


def parse_monitor_page(text: str, model: str, arms: Mapping[str, int]) -> dict[str, LabelCounts]:
    """Counts per arm name from a monitor's /metrics text; `arms` maps arm → the version served on it
    (the live arm's series of another version, e.g. from before the rollout, is not this live's)."""
    from prometheus_client.parser import text_string_to_metric_families

    wanted = {"adrank_monitor_impressions": "impressions", "adrank_monitor_clicks": "clicks",
              "adrank_monitor_mean_p_ctr": "mean_p_ctr"}
    values: dict[str, dict[str, float]] = {arm: {} for arm in arms}
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise LabelSourceError(f"monitor page is not Prometheus text: {exc}") from None
    for family in families:
        for sample in family.samples:
            key = wanted.get(sample.name)
            if key is None or sample.labels.get("model") != model:
                continue
            arm = sample.labels.get("arm", "")
            if arm in arms and sample.labels.get("version") == str(arms[arm]) and math.isfinite(sample.value):
                values[arm][key] = sample.value
    out = {}
    for arm, v in values.items():
        n = int(v.get("impressions", 0))
        out[arm] = LabelCounts(impressions=n, clicks=int(v.get("clicks", 0)),
                               predicted_clicks=n * v.get("mean_p_ctr", 0.0))
    return out


def read_monitor(source: Labels, model: str, arms: Mapping[str, int]) -> dict[str, LabelCounts]:
    """GET the monitor page and parse it; LabelSourceError names the URL and what went wrong."""
    try:
        with urllib.request.urlopen(source.monitor_url, timeout=source.timeout_s) as r:  # noqa: S310 - http(s) only
            body = r.read(MAX_PAGE_BYTES + 1)
    except (OSError, ValueError) as exc:
        raise LabelSourceError(f"label source {source.monitor_url} unreadable: {exc}") from None
    if len(body) > MAX_PAGE_BYTES:
        raise LabelSourceError(f"label source {source.monitor_url}: page over {MAX_PAGE_BYTES} bytes")
    return parse_monitor_page(body.decode("utf-8", "replace"), model, arms)


NO_SOURCE = "no label source in the spec (add [labels] monitor_url to judge calibration)"


def with_labels(window: WindowMetrics, spec: RolloutSpec, live_version: int | None) -> WindowMetrics:
    """`window` with each arm's labelled impressions so far (cumulative over the joined log: labels of
    earlier windows keep arriving), or with the note saying why there are none."""
    if spec.labels is None:
        return replace(window, labels_note=NO_SOURCE)
    if live_version is None:
        return replace(window, labels_note="no live version to compare calibration with")
    try:
        counts = read_monitor(spec.labels, spec.model, {"live": live_version, "canary": spec.version})
    except LabelSourceError as exc:
        return replace(window, labels_note=str(exc))
    live, can = counts["live"], counts["canary"]
    return replace(window,
                   live=replace(window.live, labeled=live.impressions, clicks=live.clicks,
                                predicted_clicks=live.predicted_clicks),
                   canary=replace(window.canary, labeled=can.impressions, clicks=can.clicks,
                                  predicted_clicks=can.predicted_clicks))
