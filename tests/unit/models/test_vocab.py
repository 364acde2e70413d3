"""models.vocab: the one source of placement/device strings, and what the builders send from it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from models.vocab import DEVICE_TRAFFIC, DEVICES, PLACEMENT_TRAFFIC, PLACEMENTS


@pytest.mark.parametrize("vocab", [PLACEMENTS, DEVICES])
def test_index_zero_is_other_and_values_are_unique_lowercase(vocab: tuple[str, ...]) -> None:
    assert vocab[0] == "other"
    assert len(set(vocab)) == len(vocab) and all(v == v.lower() for v in vocab)


@pytest.mark.parametrize("traffic,vocab", [(PLACEMENT_TRAFFIC, PLACEMENTS), (DEVICE_TRAFFIC, DEVICES)])
def test_traffic_shares_name_known_values_and_sum_to_one(traffic: dict[str, float], vocab: tuple[str, ...]) -> None:
    # a value outside the vocabulary would reach the model as "other" without any error
    assert set(traffic) <= set(vocab[1:])
    assert sum(traffic.values()) == pytest.approx(1.0)


def test_the_client_and_load_generator_import_no_torch_or_training_code() -> None:
    code = ("import sys, serving.client, loadtests.workload; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'exporters') "
            "or (m.startswith('models.') and m != 'models.vocab')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
