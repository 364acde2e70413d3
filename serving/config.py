"""Server configuration: one frozen dataclass, built from CLI flags or environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    model_repository: str = "runs/demo/model_repository"
    default_model: str = "vm"
    backend: str = "embedded"  # "embedded" (in-process onnxruntime) | "triton"
    triton_url: str = "127.0.0.1:8001"
    cache_backend: str = "none"  # "embedded" | "redis" | "none": where LoopFM models read FM history
    cache_location: str = ""  # directory (embedded) or redis:// URL
    max_candidates: int = 1000
    max_dense_features: int = 64
    max_recent_categories: int = 64
    max_request_id_len: int = 128
    max_message_bytes: int = 4 * 1024 * 1024
    # requests further in the future than this are refused (clock skew tolerance)
    max_future_skew_ms: int = 5 * 60 * 1000
    intra_op_threads: int = 1
    max_concurrent_rpcs: int = 256

    @classmethod
    def from_env(cls, prefix: str = "ADRANK_", **overrides: object) -> ServerConfig:
        """Fields from `ADRANK_<FIELD>` environment variables, then `overrides`."""
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = os.environ.get(prefix + f.name.upper())
            if raw is not None:
                values[f.name] = int(raw) if f.type in ("int", int) else raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
