"""A synthetic ads world with a known ground truth.

Why synthetic: the true click / conversion probabilities are recorded per event, so the oracle
AUC / NE of the test set is known and every model's gap to it can be measured. The world is built
so that the LoopFM question is testable:

* **Feature gap.** A user's long-term interest vector and conversion propensity drive the labels but
  are never columns: only a model that reads the user's *event history* (the FM) can infer them.
  The VM sees the user's segment (a weak proxy) and a short window of recent categories.
* **Long-range dependence.** Interests drift slowly over the whole time range, so events far older
  than a VM's short window still carry signal.
* **Short-term intent.** Sessions have an intent category; ads of that category are both shown more
  and clicked more, which a short window captures.

Everything is vectorized numpy: 10^6 events take a few seconds on one core.

`SyntheticWorld` holds the hidden parameters and the true-probability functions; `build_world(config)`
rebuilds the world of `generate_synthetic(config)` so that traffic simulated later (`loadtests.simulate`)
draws its labels from the same truth.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from models.data.schema import EventLog, empty_columns

MS_PER_HOUR = 3_600_000
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: a fixed origin keeps runs reproducible


@dataclass(frozen=True, kw_only=True)
class SyntheticConfig:
    """Size and difficulty of the synthetic world. Defaults generate in seconds on 2 cores."""

    n_events: int = 300_000
    n_users: int | None = None  # default: n_events // 60 (a long history per user)
    n_ads: int = 3_000
    n_categories: int = 40
    n_advertisers: int = 300
    n_campaigns: int = 1_000
    n_segments: int = 8
    n_placements: int = 4
    n_devices: int = 3
    latent_dim: int = 16
    days: int = 60
    session_hours: float = 3.0
    intent_show_rate: float = 0.5  # share of impressions drawn from the session's intent category
    base_ctr_logit: float = -2.6
    interest_weight: float = 2.2  # long-term interest (history-only signal)
    intent_weight: float = 0.9  # short-term intent (short-window signal)
    drift: float = 0.8  # how far interests move over the whole range
    base_cvr_logit: float = -1.2
    propensity_weight: float = 1.6  # user's hidden conversion propensity (history-only signal)
    seed: int = 0

    @property
    def users(self) -> int:
        return self.n_users if self.n_users is not None else max(50, self.n_events // 60)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass(frozen=True, eq=False)
class SyntheticWorld:
    """The hidden parameters of one synthetic world: ads, users and the functions that turn them into
    true click / conversion probabilities.

    Why apart from the events: the traffic simulator (`loadtests.simulate`) shows the world's users ads a
    *served model* chose, at times after the generated range, and must draw their labels from the same
    truth the training events were drawn from. `build_world(config)` rebuilds exactly the world
    `generate_synthetic(config)` drew its events from (same generator, same draw order).

    Usage::

        world = build_world(SyntheticConfig(n_events=300_000, seed=0))
        p = world.true_p_click(user, ad, offset_ms, placement, hour)
    """

    config: SyntheticConfig
    cat_centre: np.ndarray  # [n_categories, k]
    ad_cat: np.ndarray  # [n_ads] sorted: ads of a category are contiguous
    ad_vec: np.ndarray  # [n_ads, k]
    ad_quality: np.ndarray
    ad_advertiser: np.ndarray
    ad_campaign: np.ndarray
    advertiser_cvr: np.ndarray
    ad_conv_vec: np.ndarray
    ad_bid: np.ndarray
    cat_start: np.ndarray  # first ad of each category
    cat_count: np.ndarray
    segment: np.ndarray  # [n_users]
    interest0: np.ndarray
    drift_dir: np.ndarray
    propensity: np.ndarray
    favourite_cat: np.ndarray
    activity: np.ndarray  # relative request rate of each user
    placement_effect: np.ndarray
    hour_effect: np.ndarray

    @classmethod
    def draw(cls, config: SyntheticConfig, rng: np.random.Generator) -> SyntheticWorld:
        """Draws ads then users from `rng`, in the order `generate_synthetic` always has (its events are
        drawn from the same generator afterwards)."""
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

        placement_effect = np.linspace(-0.4, 0.4, config.n_placements).astype(f32)
        hour_effect = (0.2 * np.sin(np.arange(24) / 24 * 2 * np.pi)).astype(f32)
        return cls(config, cat_centre, ad_cat, ad_vec, ad_quality, ad_advertiser, ad_campaign, advertiser_cvr,
                   ad_conv_vec, ad_bid, cat_start, cat_count, segment, interest0, drift_dir, propensity, favourite_cat,
                   activity, placement_effect, hour_effect)

    @property
    def span_ms(self) -> int:
        """Length of the generated range; `offset_ms` beyond it extrapolates the interest drift."""
        return self.config.days * 24 * MS_PER_HOUR

    def intent_category(self, user: np.ndarray, offset_ms: np.ndarray) -> np.ndarray:
        """The session intent of each (user, time): a stable hash of (user, session), so every event of
        a session shares it; 40% of sessions are about the user's favourite category."""
        session = offset_ms // int(self.config.session_hours * MS_PER_HOUR)
        h = (user.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
             + session.astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9))
        h ^= h >> np.uint64(31)
        n_c = self.config.n_categories
        return np.where((h % np.uint64(100)) < 40, self.favourite_cat[user],
                        (h >> np.uint64(8)) % np.uint64(n_c)).astype(np.int64)

    def true_p_click(self, user: np.ndarray, ad: np.ndarray, offset_ms: np.ndarray, placement: np.ndarray,
                     hour: np.ndarray, intent: np.ndarray | None = None) -> np.ndarray:
        """P(click) of showing `ad` to `user` at `offset_ms` after START_MS (float32, one per row).

        Placements and hours index the world's effects (0 ≤ placement < n_placements, 0 ≤ hour < 24).
        `intent` defaults to `intent_category(user, offset_ms)`."""
        config, k = self.config, self.config.latent_dim
        if intent is None:
            intent = self.intent_category(user, offset_ms)
        frac = (offset_ms / self.span_ms).astype(np.float32)
        interest_t = self.interest0[user] + config.drift * frac[:, None] * self.drift_dir[user]
        affinity = np.einsum("ij,ij->i", interest_t, self.ad_vec[ad]) * np.sqrt(k)
        ctr_logit = (config.base_ctr_logit + config.interest_weight * affinity / 2.0
                     + config.intent_weight * (self.ad_cat[ad] == intent) + self.ad_quality[ad]
                     + self.placement_effect[placement] + self.hour_effect[hour])
        return _sigmoid(ctr_logit).astype(np.float32)

    def true_p_conversion(self, user: np.ndarray, ad: np.ndarray) -> np.ndarray:
        """P(conversion | click) of `ad` for `user` (float32): the user's hidden propensity and the
        advertiser's rate; time does not enter it."""
        config = self.config
        cvr_logit = (config.base_cvr_logit
                     + config.propensity_weight * np.einsum("ij,ij->i", self.propensity[user], self.ad_conv_vec[ad])
                     + self.advertiser_cvr[self.ad_advertiser[ad]])
        return _sigmoid(cvr_logit).astype(np.float32)


def build_world(config: SyntheticConfig = SyntheticConfig()) -> SyntheticWorld:
    """The world `generate_synthetic(config)` draws its events from, without drawing the events."""
    return SyntheticWorld.draw(config, np.random.default_rng(config.seed))


def generate_synthetic(config: SyntheticConfig = SyntheticConfig()) -> EventLog:
    """Draws users, ads and events from `config`; the same config always yields the same events."""
    if not 10_000 <= config.n_events <= 10_000_000:
        raise ValueError(f"n_events must be within [1e4, 1e7], got {config.n_events}")
    rng = np.random.default_rng(config.seed)
    world = SyntheticWorld.draw(config, rng)
    n_u, n_a = config.users, config.n_ads
    cat_start, cat_count = world.cat_start, world.cat_count

    # --- events
    n = config.n_events
    user = rng.choice(n_u, size=n, p=world.activity / world.activity.sum())
    span_ms = world.span_ms
    offset = rng.integers(0, span_ms, n)
    intent = world.intent_category(user, offset)
    from_intent = rng.random(n) < config.intent_show_rate
    intent_ad = cat_start[intent] + (rng.random(n) * cat_count[intent]).astype(np.int64)
    intent_ad = np.where(cat_count[intent] > 0, intent_ad, rng.integers(0, n_a, n))
    ad = np.where(from_intent, intent_ad, rng.integers(0, n_a, n))

    placement = rng.integers(0, config.n_placements, n).astype(np.int32)
    device = rng.integers(0, config.n_devices, n).astype(np.int32)
    ts = START_MS + offset
    hour = ((ts // MS_PER_HOUR) % 24).astype(np.int32)

    p_click = world.true_p_click(user, ad, offset, placement, hour, intent)
    p_conv = world.true_p_conversion(user, ad)
    click = rng.random(n) < p_click
    conversion = click & (rng.random(n) < p_conv)

    cols = empty_columns(n)
    cols["user_id"][:] = user
    cols["ts_ms"][:] = ts
    cols["ad_id"][:] = ad
    cols["advertiser_id"][:] = world.ad_advertiser[ad]
    cols["campaign_id"][:] = world.ad_campaign[ad]
    cols["category"][:] = world.ad_cat[ad]
    cols["placement"][:] = placement
    cols["device"][:] = device
    cols["hour"][:] = hour
    cols["user_segment"][:] = world.segment[user]
    cols["bid"][:] = world.ad_bid[ad]
    cols["click"][:] = click
    cols["conversion"][:] = conversion
    cols["p_click"][:] = p_click
    cols["p_conversion"][:] = p_conv
    cardinality = {"user_id": n_u, "ad_id": n_a, "advertiser_id": config.n_advertisers,
                   "campaign_id": config.n_campaigns, "category": config.n_categories,
                   "placement": config.n_placements, "device": config.n_devices, "hour": 24,
                   "user_segment": config.n_segments}
    meta = {"config": asdict(config), "ctr": float(click.mean()),
            "cvr_given_click": float(conversion.sum() / max(1, click.sum()))}
    return EventLog(cols, cardinality, "synthetic", meta).sorted_by_time()
