"""The calibration check's label source: the monitor's gauges parsed per arm and version, the spec's
[labels] table validated, and an unreadable source skipping calibration with the reason."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from rollout_fixtures import window

from serving.rollout.errors import SpecError
from serving.rollout.labels import NO_SOURCE, parse_monitor_page, with_labels
from serving.rollout.spec import parse_spec


def page(rows: list[tuple[str, str, str, int, int, float]]) -> str:
    """A /metrics page with the monitor's gauge names and labels, rendered by prometheus_client."""

    class Collector:
        def collect(self):
            fams = {k: GaugeMetricFamily(f"adrank_monitor_{k}", k, labels=["model", "version", "arm"])
                    for k in ("impressions", "clicks", "mean_p_ctr")}
            for model, version, arm, n, clicks, mean in rows:
                fams["impressions"].add_metric([model, version, arm], n)
                fams["clicks"].add_metric([model, version, arm], clicks)
                fams["mean_p_ctr"].add_metric([model, version, arm], mean)
            yield from fams.values()

    reg = CollectorRegistry()
    reg.register(Collector())
    return generate_latest(reg).decode()


def test_counts_come_from_the_arm_and_version_of_this_rollout():
    text = page([("vm", "1", "live", 1000, 50, 0.05), ("vm", "2", "canary", 400, 10, 0.1),
                 ("vm", "0", "live", 9999, 1, 0.5), ("other", "2", "canary", 5, 5, 0.9)])
    counts = parse_monitor_page(text, "vm", {"live": 1, "canary": 2})
    assert counts["live"].impressions == 1000 and counts["live"].clicks == 50
    assert counts["live"].predicted_clicks == pytest.approx(50.0)
    assert counts["canary"].impressions == 400 and counts["canary"].predicted_clicks == pytest.approx(40.0)
    assert parse_monitor_page(text, "vm", {"live": 1, "canary": 3})["canary"].impressions == 0


SPEC = 'model = "vm"\nversion = 2\nsteps = [50]\n'


def test_the_labels_table_is_validated_by_field():
    spec = parse_spec(SPEC + '[labels]\nmonitor_url = "http://127.0.0.1:9101/metrics"\n')
    assert spec.labels.hold_promotion and spec.labels.timeout_s == 5.0
    for bad, field in (('[labels]\nmonitor_url = "file:///etc/passwd"\n', "labels.monitor_url"),
                       ('[labels]\ntimeout_s = 1\n', "labels.monitor_url"),
                       ('[labels]\nmonitor_url = "http://x/m"\nurl = "typo"\n', "labels.url"),
                       ('[labels]\nmonitor_url = "http://x/m"\ntimeout_s = 0\n', "labels.timeout_s"),
                       ('[checks]\nmin_labelled = 0\n', "checks.min_labelled")):
        with pytest.raises(SpecError) as e:
            parse_spec(SPEC + bad)
        assert e.value.field == field, (bad, e.value)


def test_no_source_or_an_unreadable_one_skips_calibration_saying_why():
    assert with_labels(window(0), parse_spec(SPEC), 1).labels_note == NO_SOURCE
    down = parse_spec(SPEC + '[labels]\nmonitor_url = "http://127.0.0.1:9/metrics"\ntimeout_s = 0.5\n')
    note = with_labels(window(0), down, 1).labels_note
    assert note.startswith("label source http://127.0.0.1:9/metrics unreadable"), note
