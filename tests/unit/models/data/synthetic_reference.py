# ruff: noqa: E501  (a verbatim copy: its lines stay as they were)
"""The synthetic generator as it stood before `SyntheticWorld` was split out of it, kept verbatim.

Why: the traffic simulator draws labels from the world's functions, and every trained model, cache and
DAS log keyed on event ids assumes `generate_synthetic` still yields the same events. The test compares
the refactored generator with this copy bit for bit; do not edit it to make a test pass.
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from models.data.schema import EventLog, empty_columns
from models.data.synthetic import MS_PER_HOUR, START_MS, SyntheticConfig


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def generate_synthetic_reference(config: SyntheticConfig) -> EventLog:
    """`generate_synthetic` as it was before the world was split out (verbatim)."""
    if not 10_000 <= config.n_events <= 10_000_000:
        raise ValueError(f"n_events must be within [1e4, 1e7], got {config.n_events}")
    rng = np.random.default_rng(config.seed)
    k, n_u, n_a, n_c = config.latent_dim, config.users, config.n_ads, config.n_categories
    f32 = np.float32

    # --- ads: category centres give ads of one category a shared direction
    cat_centre = rng.standard_normal((n_c, k)).astype(f32) / np.sqrt(k)
    ad_cat = np.sort(rng.integers(0, n_c, n_a)).astype(np.int32)  # sorted: ads of a category are contiguous
    ad_vec = cat_centre[ad_cat] + 0.5 * rng.standard_normal((n_a, k)).astype(f32) / np.sqrt(k)
    ad_quality = 0.3 * rng.standard_normal(n_a).astype(f32)
    ad_advertiser = rng.integers(0, config.n_advertisers, n_a)
    ad_campaign = rng.integers(0, config.n_campaigns, n_a)
    advertiser_cvr = 0.4 * rng.standard_normal(config.n_advertisers).astype(f32)
    ad_conv_vec = rng.standard_normal((n_a, 4)).astype(f32) / 2.0
    ad_bid = np.exp(rng.normal(0.0, 0.5, n_a)).astype(f32)
    cat_start = np.searchsorted(ad_cat, np.arange(n_c))
    cat_count = np.diff(np.r_[cat_start, n_a])

    # --- users: segment is a weak, public proxy of the hidden long-term interest
    segment = rng.integers(0, config.n_segments, n_u).astype(np.int32)
    seg_centre = rng.standard_normal((config.n_segments, k)).astype(f32) / np.sqrt(k)
    interest0 = 0.5 * seg_centre[segment] + rng.standard_normal((n_u, k)).astype(f32) / np.sqrt(k)
    drift_dir = rng.standard_normal((n_u, k)).astype(f32) / np.sqrt(k)
    propensity = rng.standard_normal((n_u, 4)).astype(f32) / 2.0
    favourite_cat = np.argmax(interest0 @ cat_centre.T, axis=1)
    activity = rng.lognormal(0.0, 0.8, n_u)

    # --- events
    n = config.n_events
    user = rng.choice(n_u, size=n, p=activity / activity.sum())
    span_ms = config.days * 24 * MS_PER_HOUR
    offset = rng.integers(0, span_ms, n)
    frac = (offset / span_ms).astype(f32)
    session = offset // int(config.session_hours * MS_PER_HOUR)
    # intent category per (user, session): a stable hash, so all events of a session share it
    h = (user.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + session.astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9))
    h ^= h >> np.uint64(31)
    intent = np.where((h % np.uint64(100)) < 40, favourite_cat[user], (h >> np.uint64(8)) % np.uint64(n_c)).astype(np.int64)
    from_intent = rng.random(n) < config.intent_show_rate
    intent_ad = cat_start[intent] + (rng.random(n) * cat_count[intent]).astype(np.int64)
    intent_ad = np.where(cat_count[intent] > 0, intent_ad, rng.integers(0, n_a, n))
    ad = np.where(from_intent, intent_ad, rng.integers(0, n_a, n))

    placement = rng.integers(0, config.n_placements, n).astype(np.int32)
    device = rng.integers(0, config.n_devices, n).astype(np.int32)
    ts = START_MS + offset
    hour = ((ts // MS_PER_HOUR) % 24).astype(np.int32)
    placement_effect = np.linspace(-0.4, 0.4, config.n_placements).astype(f32)
    hour_effect = (0.2 * np.sin(np.arange(24) / 24 * 2 * np.pi)).astype(f32)

    interest_t = interest0[user] + config.drift * frac[:, None] * drift_dir[user]
    affinity = np.einsum("ij,ij->i", interest_t, ad_vec[ad]) * np.sqrt(k)
    ctr_logit = (config.base_ctr_logit + config.interest_weight * affinity / 2.0
                 + config.intent_weight * (ad_cat[ad] == intent) + ad_quality[ad]
                 + placement_effect[placement] + hour_effect[hour])
    p_click = _sigmoid(ctr_logit).astype(f32)
    cvr_logit = (config.base_cvr_logit + config.propensity_weight * np.einsum("ij,ij->i", propensity[user], ad_conv_vec[ad])
                 + advertiser_cvr[ad_advertiser[ad]])
    p_conv = _sigmoid(cvr_logit).astype(f32)
    click = rng.random(n) < p_click
    conversion = click & (rng.random(n) < p_conv)

    cols = empty_columns(n)
    cols["user_id"][:] = user
    cols["ts_ms"][:] = ts
    cols["ad_id"][:] = ad
    cols["advertiser_id"][:] = ad_advertiser[ad]
    cols["campaign_id"][:] = ad_campaign[ad]
    cols["category"][:] = ad_cat[ad]
    cols["placement"][:] = placement
    cols["device"][:] = device
    cols["hour"][:] = hour
    cols["user_segment"][:] = segment[user]
    cols["bid"][:] = ad_bid[ad]
    cols["click"][:] = click
    cols["conversion"][:] = conversion
    cols["p_click"][:] = p_click
    cols["p_conversion"][:] = p_conv
    cardinality = {"user_id": n_u, "ad_id": n_a, "advertiser_id": config.n_advertisers,
                   "campaign_id": config.n_campaigns, "category": n_c, "placement": config.n_placements,
                   "device": config.n_devices, "hour": 24, "user_segment": config.n_segments}
    meta = {"config": asdict(config), "ctr": float(click.mean()), "cvr_given_click": float(conversion.sum() / max(1, click.sum()))}
    return EventLog(cols, cardinality, "synthetic", meta).sorted_by_time()
