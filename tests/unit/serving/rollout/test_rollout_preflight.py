"""Preflight refuses a candidate for each reason the rollout issue names, and passes a good one.

The candidate is a real export (`exporters.onnx_export.export_onnx` of a tiny random-weight LoopFM VM);
the cache is a real embedded store holding a few users' codes.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest

from embedding_cache import EmbeddedWriter, open_reader
from exporters.manifest import read_manifest
from serving.rollout.errors import PreflightRefused, SpecError
from serving.rollout.preflight import PreflightLimits, preflight, require_preflight

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "integration"))
import triton_fixtures  # noqa: E402 - the suites' shared tiny checkpoint

FM = "fm-pre1"
NOW_MS = 1_700_000_000_000
HOUR_MS = 3_600_000


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A LoopFM VM (6 codes of width 4, int8) exported as vm/1 (NE 0.800) and vm/2 (NE 0.801)."""
    from exporters.onnx_export import export_onnx
    from models.checkpoint import load_payload, save_atomic

    base = tmp_path_factory.mktemp("preflight")
    repo = base / "repo"
    for version, ne in ((1, 0.800), (2, 0.801)):
        ckpt = triton_fixtures.tiny_checkpoint(base / f"v{version}.pt", seed=version, history=True)
        payload = load_payload(ckpt)
        payload.update(fm_version=FM, metrics={"test": {"ctr_ne": ne}},
                       history={"fm_version": FM, "length": 6, "width": 4, "codec": "int8", "pooling": "sum"})
        save_atomic(payload, ckpt)
        export_onnx(ckpt, repo, "vm", version, parity_examples=500, torchscript=False)
    return read_manifest(repo / "vm" / "1"), read_manifest(repo / "vm" / "2")


def publish(root: Path, fm_version: str, *, newest_ms: int, dim: int = 4, codec: str = "int8") -> None:
    writer = EmbeddedWriter(root, fm_version, dim=dim, codec=codec)
    n = 8
    ts = newest_ms - np.arange(n, dtype=np.int64) * 60_000
    writer.append_user_codes(np.arange(n, dtype=np.int64), ts, np.random.default_rng(0).normal(size=(n, dim))
                             .astype(np.float32))
    writer.publish(now_ms=newest_ms + 1, coverage={"source": "test"})


def opener(root: Path):
    return lambda fm: open_reader("embedded", root, fm)


def failed(report) -> dict[str, str]:
    return {c.name: c.message for c in report.checks if c.status == "failed"}


def test_a_good_candidate_passes(exported, tmp_path):
    live, cand = exported
    publish(tmp_path, FM, newest_ms=NOW_MS - HOUR_MS)
    report = require_preflight(cand, live=live, open_cache=opener(tmp_path), now_ms=NOW_MS)
    assert [(c.name, c.status) for c in report.checks] == [
        ("embeddings", "passed"), ("feature_schema", "passed"), ("parity", "passed"), ("offline_ne", "passed")]
    assert "fm_version 'fm-pre1': snapshot" in report.checks[0].message


def test_missing_fm_version_is_refused_with_failed_precondition(exported, tmp_path):
    live, cand = exported
    publish(tmp_path, "fm-other", newest_ms=NOW_MS)
    with pytest.raises(PreflightRefused) as exc:
        require_preflight(cand, live=live, open_cache=opener(tmp_path), now_ms=NOW_MS)
    assert exc.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "embeddings: fm_version 'fm-pre1' has no embeddings in the cache" in str(exc.value)
    assert "vm/2 refused by preflight" in str(exc.value)
    no_cache = preflight(cand, live=live, open_cache=None, now_ms=NOW_MS)
    assert "no embedding cache is configured" in failed(no_cache)["embeddings"]


def test_stale_embeddings_are_refused(exported, tmp_path):
    live, cand = exported
    publish(tmp_path, FM, newest_ms=NOW_MS - 30 * HOUR_MS)
    report = preflight(cand, live=live, open_cache=opener(tmp_path), now_ms=NOW_MS)
    assert failed(report) == {"embeddings": failed(report)["embeddings"]}
    assert "fm_version 'fm-pre1': newest embeddings in snapshot" in failed(report)["embeddings"]
    assert "30.0 h old; the bound is 6.0 h" in failed(report)["embeddings"]
    lenient = preflight(cand, live=live, open_cache=opener(tmp_path), now_ms=NOW_MS,
                        limits=PreflightLimits(max_embedding_age_s=48 * 3600))
    assert lenient.passed


def test_codes_of_another_width_are_refused(exported, tmp_path):
    live, cand = exported
    publish(tmp_path, FM, newest_ms=NOW_MS, dim=8)
    msg = failed(preflight(cand, live=live, open_cache=opener(tmp_path), now_ms=NOW_MS))["embeddings"]
    assert "inputs.fm_history width 4 differs from the cache's dim 8" in msg


def test_a_different_feature_schema_is_refused(exported, tmp_path):
    live, cand = exported
    publish(tmp_path, FM, newest_ms=NOW_MS)
    wider = dict(cand.feature_spec, dense_width=6)
    msg = failed(preflight(replace(cand, feature_spec=wider), live=live, open_cache=opener(tmp_path),
                           now_ms=NOW_MS))["feature_schema"]
    assert msg == "differs from live 1's: feature_spec.dense_width: 6 vs 4"
    serving = dict(live.feature_spec, field_sizes=[41, *live.feature_spec["field_sizes"][1:]])
    msg = failed(preflight(cand, live=live, serving_spec=serving, open_cache=opener(tmp_path),
                           now_ms=NOW_MS))["feature_schema"]
    assert msg.startswith("differs from serving's: feature_spec.field_sizes: [40,")
    renamed = dict(cand.feature_spec, fields=["x"] * 8)
    msg = failed(preflight(replace(cand, feature_spec=renamed), now_ms=NOW_MS,
                           open_cache=opener(tmp_path)))["feature_schema"]
    assert msg.startswith("feature_spec: serving cannot build it")


def test_failed_or_missing_parity_is_refused(exported, tmp_path):
    live, cand = exported
    publish(tmp_path, FM, newest_ms=NOW_MS)
    bad = replace(cand, parity={**cand.parity, "max_abs": 3e-3})
    assert failed(preflight(bad, live=live, open_cache=opener(tmp_path), now_ms=NOW_MS)) == {
        "parity": "parity.max_abs 3.00e-03 exceeds the bound 1e-04"}
    none = replace(cand, parity={})
    assert failed(preflight(none, live=live, open_cache=opener(tmp_path), now_ms=NOW_MS))["parity"] == (
        "parity.max_abs: not recorded by the export")


def test_an_offline_ne_regression_is_refused(exported, tmp_path):
    live, cand = exported
    publish(tmp_path, FM, newest_ms=NOW_MS)
    worse = replace(cand, metrics={"test": {"ctr_ne": 0.812}})
    msg = failed(preflight(worse, live=live, open_cache=opener(tmp_path), now_ms=NOW_MS))["offline_ne"]
    assert msg == "metrics.test.ctr_ne 0.8120 vs live 1's 0.8000 (+1.50%; the bound is +0.50%)"
    unrecorded = replace(cand, metrics={})
    assert "metrics.test.ctr_ne: not recorded" in failed(
        preflight(unrecorded, live=live, open_cache=opener(tmp_path), now_ms=NOW_MS))["offline_ne"]
    first = preflight(cand, live=None, open_cache=opener(tmp_path), now_ms=NOW_MS)
    assert first.passed and first.checks[3].status == "skipped"


def test_every_failure_is_reported_at_once(exported, tmp_path):
    live, cand = exported
    bad = replace(cand, parity={"max_abs": 1.0}, metrics={"test": {"ctr_ne": 0.9}})
    with pytest.raises(PreflightRefused) as exc:
        require_preflight(bad, live=live, open_cache=opener(tmp_path), now_ms=NOW_MS)
    assert [f.split(":")[0] for f in exc.value.failures] == ["embeddings", "parity", "offline_ne"]


def test_a_version_without_fm_history_skips_the_cache(exported):
    from rollout_fixtures import make_manifest

    report = preflight(make_manifest(2), live=make_manifest(1), open_cache=None, now_ms=NOW_MS)
    assert report.passed and report.checks[0].status == "skipped"


@pytest.mark.parametrize("kwargs, field", [({"max_embedding_age_s": 0}, "preflight.max_embedding_age_s"),
                                           ({"max_parity_abs": -1.0}, "preflight.max_parity_abs"),
                                           ({"max_ne_regression": 2.0}, "preflight.max_ne_regression")])
def test_limits_are_validated(kwargs, field):
    with pytest.raises(SpecError) as exc:
        PreflightLimits(**kwargs)
    assert exc.value.field == field
