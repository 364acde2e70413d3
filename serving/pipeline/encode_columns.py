"""Stage 8, encode, for ScoreColumns: Ranking → ScoreColumnsResponse.

The columnar twin of `add_candidates`: the ranked columns rank already gathered are written as
`adrank.v1.Column` blocks (one `tobytes` each, little-endian), so the response costs the same for 20
candidates or 2,000. Served_by, flags and timing are filled by the encode stage exactly as for rows.
"""

from __future__ import annotations

from protos.adrank.v1 import ranking_pb2
from serving.columns import RANKED_COLUMNS, fill_column
from serving.pipeline.values import Ranking


def set_ranked_columns(response: ranking_pb2.ScoreColumnsResponse, ranking: Ranking) -> None:
    """The ranked rows of `ranking` (best first) as the response's columns."""
    cols = response.candidates
    for name, dtype in RANKED_COLUMNS:
        fill_column(getattr(cols, name), getattr(ranking, name), dtype)
