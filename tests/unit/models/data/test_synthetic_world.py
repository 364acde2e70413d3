"""`SyntheticWorld` exposes the generator's truth without changing a single generated value."""

from __future__ import annotations

import numpy as np
import pytest

from models.data.schema import EVENT_COLUMNS
from models.data.synthetic import START_MS, SyntheticConfig, build_world, generate_synthetic
from tests.unit.models.data.synthetic_reference import generate_synthetic_reference

CONFIGS = [
    SyntheticConfig(n_events=20_000, seed=0),
    SyntheticConfig(n_events=12_000, seed=7, n_placements=3, n_categories=25, session_hours=1.5, drift=1.3),
]


@pytest.mark.parametrize("config", CONFIGS, ids=["default-small", "other-shape"])
def test_generated_events_are_bit_identical_to_the_reference(config: SyntheticConfig) -> None:
    new, old = generate_synthetic(config), generate_synthetic_reference(config)
    for name in EVENT_COLUMNS:
        np.testing.assert_array_equal(new[name], old[name], err_msg=name, strict=True)
    assert new.cardinality == old.cardinality and new.meta == old.meta and new.source == old.source


def test_world_functions_reproduce_the_recorded_truth() -> None:
    config = CONFIGS[0]
    events, world = generate_synthetic(config), build_world(config)
    rows = np.random.default_rng(1).choice(len(events), 500, replace=False)  # any subset, any order
    user, ad = events["user_id"][rows], events["ad_id"][rows]
    offset = events["ts_ms"][rows] - START_MS
    p_click = world.true_p_click(user, ad, offset, events["placement"][rows], events["hour"][rows])
    np.testing.assert_array_equal(p_click, events["p_click"][rows])
    np.testing.assert_array_equal(world.true_p_conversion(user, ad), events["p_conversion"][rows])
    np.testing.assert_array_equal(world.ad_cat[ad], events["category"][rows])
    np.testing.assert_array_equal(world.segment[user], events["user_segment"][rows])
    np.testing.assert_array_equal(world.ad_bid[ad], events["bid"][rows])


def test_intent_is_stable_within_a_session() -> None:
    world = build_world(CONFIGS[0])
    user = np.full(3, 5)
    session_ms = int(world.config.session_hours * 3_600_000)
    same = world.intent_category(user, np.array([0, 1, session_ms - 1]))
    assert len(set(same.tolist())) == 1
