"""Shared builders for the rollout tests (imported by name, like tests/integration/triton_fixtures.py):
hand-built manifests in the real exporter's format, cheap enough to make one per test."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from exporters.manifest import ModelManifest, TensorSpec
from serving.rollout.analysis import ArmWindow, WindowMetrics

FEATURE_SPEC = {"field_sizes": [40, 12, 16, 8, 6, 4, 24, 5], "recent_k": 5, "dense_width": 4,
                "fields": ["ad_id", "advertiser_id", "campaign_id", "category", "placement", "device", "hour",
                           "user_segment"]}


def make_manifest(version: int, *, name: str = "vm", fm_version: str = "none", ne: float | None = 0.80,
                  max_abs: float | None = 1e-7, sha: str | None = None, **changes) -> ModelManifest:
    metrics = {"test": {"ctr_ne": ne, "ctr_auc": 0.7}} if ne is not None else {}
    parity = {"max_abs": max_abs, "max_rel": 1e-6, "n": 2000} if max_abs is not None else {}
    m = ModelManifest(name=name, version=version, fm_version=fm_version, feature_spec=dict(FEATURE_SPEC),
                      inputs=(TensorSpec("sparse_ids", "int64", ("batch", 8)),),
                      outputs=(TensorSpec("p_ctr", "float32", ("batch",)),),
                      sha256=sha or f"{version:064x}", metrics=metrics, parity=parity)
    return replace(m, **changes)


WINDOW_CALLS = 2_000


def arm(seed: int, *, logit_shift: float = 0.0, logit_scale: float = 1.0, latency_ms: float = 4.0,
        errors: int = 0, n: int = WINDOW_CALLS, labels: bool = False) -> ArmWindow:
    rng = np.random.default_rng(seed)
    logits = rng.normal(-3.0, 0.8, n) * logit_scale + logit_shift
    p = 1 / (1 + np.exp(-logits))
    lat = rng.lognormal(np.log(latency_ms), 0.3, n)
    y = (rng.random(n) < p).astype(int) if labels else None
    return ArmWindow.from_samples(lat, p, errors=errors, labels=y)


def window(i: int, **canary) -> WindowMetrics:
    return WindowMetrics(live=arm(1000 + i), canary=arm(2000 + i, **canary))
