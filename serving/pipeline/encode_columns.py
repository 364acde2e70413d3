"""Stage 8, encode, for ScoreColumns: Ranking → ScoreColumnsResponse.

The columnar twin of `add_candidates`: the ranked columns rank already gathered are written as
`adrank.v1.Column` blocks (one `tobytes` each, little-endian) in one bytes build that the response
parses (`serving.columns.columns_message_bytes`), so the response costs the same for 20 candidates or
2,000. Served_by, flags and timing are filled by the encode stage exactly as for rows.
"""

from __future__ import annotations

from protos.adrank.v1 import ranking_pb2
from serving.columns import RANKED_COLUMNS, columns_message_bytes
from serving.pipeline.values import Ranking


def set_ranked_columns(response: ranking_pb2.ScoreColumnsResponse, ranking: Ranking) -> None:
    """The ranked rows of `ranking` (best first) as the response's columns."""
    blob = columns_message_bytes(ranking_pb2.RankedColumns,
                                 tuple((name, dtype, getattr(ranking, name)) for name, dtype in RANKED_COLUMNS))
    response.candidates.MergeFromString(blob)
