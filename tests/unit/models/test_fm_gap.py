"""`adrank fm-gap`: each world term is removed one at a time, and the FM change is chosen on validation NE,
never on test NE."""

from __future__ import annotations

import json

import pytest

import models.fm_gap as fm_gap


@pytest.fixture
def fake_fm(monkeypatch):
    """Records what each FM fit was asked for and returns figures where test NE and validation NE disagree
    about the best candidate, so a choice made on test rows would be visible."""
    calls: list[dict] = []

    def fit(data, profile, seed, overrides=None):
        overrides = dict(overrides or {})
        calls.append({"overrides": overrides, "n_events": len(data.events)})
        wide = overrides.get("compskip") is False
        return {"test_ne": 0.80 if wide else 0.90, "test_auc": 0.7, "validation_ne": 0.95 if wide else 0.85,
                "best_epoch": 1, "seconds": 0.0, "history_len": overrides.get("history_len", profile.history_len)}

    monkeypatch.setattr(fm_gap, "_fm", fit)
    return calls


def test_every_world_term_is_removed_once_and_the_choice_is_made_on_validation(tmp_path, fake_fm):
    out = fm_gap.run_fm_gap(tmp_path, quick=True, log=lambda _: None)
    worlds = out["worlds"]
    assert set(fm_gap.WORLD_ABLATIONS) <= set(worlds)
    assert worlds["full world"]["gap_share_removed"] == 0.0
    # the oracle is the removed world's own: without the interest term, clicks are harder to predict
    assert worlds["no interest (user × ad affinity)"]["oracle_ne"] > worlds["full world"]["oracle_ne"]
    for name, r in worlds.items():
        assert r["gap"] == pytest.approx(r["test_ne"] - r["oracle_ne"]), name
    # all-global has the better test NE but the worse validation NE: the experiment FM is chosen
    assert out["candidates"]["all-global layers"]["test_ne"] < out["candidates"]["experiment FM"]["test_ne"]
    assert out["chosen_on_validation"] == "experiment FM"
    short = [c for c in fake_fm if c["overrides"].get("history_len") == fm_gap.PROFILES["quick"].short_history]
    assert len(short) == 1  # the long-history probe: the full world read through a short history
    bound = out["history_bound"]  # computed on the real quick world, beside the (fake) FM
    assert bound["oracle_ne"] == worlds["full world"]["oracle_ne"] < bound["ne"] < bound["ne_prior_only"]
    assert bound["information_share"] == pytest.approx((bound["ne"] - bound["oracle_ne"]) / worlds["full world"]["gap"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["chosen_on_validation"] == "experiment FM"
    assert "**(chosen)**" in (tmp_path / "results.md").read_text()


def test_a_candidate_subset_without_ablations_trains_only_the_full_world(tmp_path, fake_fm):
    out = fm_gap.run_fm_gap(tmp_path, quick=True, log=lambda _: None, candidates=("interaction",), ablations=False)
    assert list(out["worlds"]) == ["full world"]  # no world-term ablation, no short-history probe
    assert list(out["candidates"]) == ["experiment FM", "interaction scalars"]  # the experiment FM is kept, first
    assert [c["overrides"] for c in fake_fm] == [{}, {"interaction": True}]
    assert out["history_bound"]["fm_ne"] == out["worlds"]["full world"]["test_ne"]
    assert out["ablations"] is False
    md = (tmp_path / "results.md").read_text()
    assert "interaction scalars" in md and "no drift" not in md and "FLOPs / example" in md


def test_an_unknown_candidate_key_names_the_known_ones():
    with pytest.raises(ValueError, match="--candidates: unknown widest; this profile has experiment, all-global"):
        fm_gap.PROFILES["default"].candidate_subset(("interaction", "widest"))
    keys = [c[0] for c in fm_gap.PROFILES["default"].candidates]
    assert keys[0] == "experiment" and fm_gap.PROFILES["default"].candidates[0][2] == ()
    assert {"interaction", "wider-interaction"} <= set(keys)
