"""Request validation in one call, for callers outside the pipeline (tests, benches).

The work is done by two pipeline stages: `serving.pipeline.decode` reads the protobuf rows into
arrays and `serving.pipeline.validate` checks them, every refusal naming the field, the value and
the limit. `parse_request` runs both, exactly as a Score request does.
"""

from __future__ import annotations

from protos.adrank.v1 import ranking_pb2
from serving.config import ServerConfig
from serving.pipeline.decode import decode_rows
from serving.pipeline.validate import validate_request
from serving.pipeline.values import DecodedRequest, ParsedRequest

__all__ = ["DecodedRequest", "ParsedRequest", "parse_request"]


def parse_request(req: ranking_pb2.ScoreRequest, config: ServerConfig, default_model: str,
                  now_ms: int | None = None) -> ParsedRequest:
    """`req` decoded and validated against `config`; InvalidRequest naming the first field out of bounds."""
    decoded = decode_rows(req, max_candidates=config.max_candidates, max_dense_features=config.max_dense_features)
    return validate_request(decoded, config, default_model, now_ms)
