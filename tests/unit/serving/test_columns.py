"""serving.columns: the one-join response columns are byte for byte what filling each Column and
serializing gives, for every dtype, empty columns and lengths whose varints take one, two and three bytes."""

from __future__ import annotations

import numpy as np
import pytest

from protos.adrank.v1 import ranking_pb2
from serving.columns import RANKED_COLUMNS, column_view, columns_message_bytes, fill_column


@pytest.mark.parametrize("n", [0, 1, 15, 16, 200, 2_100, 20_000])
def test_columns_message_bytes_equal_the_message_serialization(n):
    rng = np.random.default_rng(n)
    values = {"ad_id": rng.integers(0, 1 << 40, n), "request_index": np.arange(n)[::-1],  # a strided view
              "p_ctr": rng.random(n, dtype=np.float32), "p_cvr": rng.random(n).astype(np.float32),
              "expected_value": rng.random(n)}
    want = ranking_pb2.RankedColumns()
    for name, dtype in RANKED_COLUMNS:
        fill_column(getattr(want, name), values[name], dtype)
    blob = columns_message_bytes(ranking_pb2.RankedColumns,
                                 tuple((name, dtype, values[name]) for name, dtype in RANKED_COLUMNS))
    assert blob == want.SerializeToString()
    got = ranking_pb2.ScoreColumnsResponse()
    got.candidates.MergeFromString(blob)
    for name, dtype in RANKED_COLUMNS:
        view = column_view(getattr(got.candidates, name), name, dtype)
        np.testing.assert_array_equal(view, values[name])
