"""The history bound: it knows every world parameter but the user's interest, so it reaches the oracle when
the interest term is switched off, lies between the oracle and the prior otherwise, and improves with history."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from models.data.schema import EventLog
from models.data.synthetic import SyntheticConfig, generate_synthetic
from models.history_bound import history_bound
from models.metrics import summarize
from models.train import TrainConfig, prepare_vm_data

CONFIG = SyntheticConfig(n_events=10_000, seed=3)


def _world(config: SyntheticConfig):
    events = generate_synthetic(config)
    test_idx = prepare_vm_data(events, TrainConfig.for_dataset("synthetic", seed=config.seed)).test_idx
    oracle = summarize(events["click"][test_idx], events["p_click"][test_idx])["ne"]
    return events, test_idx, oracle


def test_without_the_interest_term_the_bound_is_the_oracle():
    config = replace(CONFIG, interest_weight=0.0)
    events, test_idx, oracle = _world(config)
    out = history_bound(events, test_idx, config)
    assert out["ne"] == pytest.approx(oracle, abs=1e-4)
    assert out["ne_prior_only"] == pytest.approx(oracle, abs=1e-4)


def test_the_bound_lies_between_the_oracle_and_the_prior_and_gains_from_history():
    events, test_idx, oracle = _world(CONFIG)
    full = history_bound(events, test_idx, CONFIG)
    one_event = history_bound(events, test_idx, CONFIG, cap=1)
    assert oracle < full["ne"] < full["ne_prior_only"]
    assert full["ne"] < full["ne_category_only"] < full["ne_prior_only"]  # per-ad vectors carry signal too
    assert full["ne"] < one_event["ne"]
    assert all(np.isfinite(v) for v in full.values())


def test_the_bound_reads_only_events_before_the_row():
    """Setting every later event's label to a click must not change a row's prediction (events are time-sorted,
    so indices past the last row are at or after its time): the history is strictly before t."""
    events, test_idx, _ = _world(CONFIG)
    rows = np.asarray(test_idx)[:200]
    base = history_bound(events, rows, CONFIG)
    later = np.arange(len(events)) > rows.max()
    columns = {k: v.copy() for k, v in events.columns.items()}
    columns["click"][later] = 1
    changed = EventLog(columns, events.cardinality, events.source, events.meta)
    assert history_bound(changed, rows, CONFIG)["ne"] == pytest.approx(base["ne"], abs=1e-12)
    assert later.any() and not np.array_equal(changed["click"], events["click"])


@pytest.mark.parametrize(("kwargs", "field"), [({"cap": 0}, "cap"), ({"test_idx": np.array([], np.int64)}, "test_idx")])
def test_bad_arguments_name_the_field(kwargs, field):
    events, test_idx, _ = _world(CONFIG)
    args = {"test_idx": test_idx[:10], **kwargs}
    with pytest.raises(ValueError, match=field):
        history_bound(events, args.pop("test_idx"), CONFIG, **args)


def test_run_pairs_the_experiment_fm_on_the_same_rows_and_refuses_other_rows(tmp_path):
    from models.history_bound import run_history_bound

    first = run_history_bound(10_000, 2, tmp_path / "a", placements=(0, 1), log=lambda _: None)
    fm_ne = [0.9, 0.95]
    experiment = {"dataset": "synthetic", "profile": "default", "seeds": [0, 1],
                  "per_seed": [{"oracle": {"ne": r["oracle_ne"]}, "fm": {"ne": f}}
                               for r, f in zip(first["per_seed"], fm_ne, strict=True)]}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(experiment))
    paired = run_history_bound(10_000, 2, tmp_path / "b", placements=(0, 1), experiment=path, log=lambda _: None)
    assert paired["fm_minus_bound"]["per_seed"] == pytest.approx([f - r["ne"] for f, r in
                                                                  zip(fm_ne, first["per_seed"], strict=True)])
    assert "FM − history bound" in (tmp_path / "b" / "results.md").read_text()
    with pytest.raises(ValueError, match="placements"):  # every placement: other rows, another oracle NE
        run_history_bound(10_000, 2, tmp_path / "c", experiment=path, log=lambda _: None)
