"""Size and accuracy of each codec on real codes: what `bytes per user` a choice of codec and L costs."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from embedding_cache.codecs import CODEC_NAMES, make_codec

# Per stored row besides the code bytes: the int64 timestamp. Per user: its int64 id and CSR offset.
TS_BYTES = 8
USER_OVERHEAD_BYTES = 16


@dataclass(frozen=True)
class CodecReport:
    """One codec's cost and error on a sample of codes."""

    codec: str
    bytes_per_row: int
    bytes_per_user: int
    rmse: float
    max_abs_error: float

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def bytes_per_user(codec_name: str, dim: int, history_len: int, **params: int) -> int:
    """Embedded-store bytes of one user holding `history_len` codes: codes + scales + timestamps + index."""
    codec = make_codec(codec_name, dim, **params)
    row = codec.bytes_per_row + (4 if codec.has_row_scale else 0) + TS_BYTES
    return history_len * row + USER_OVERHEAD_BYTES


def codec_report(codes: np.ndarray, history_len: int, codecs: tuple[str, ...] = CODEC_NAMES) -> list[CodecReport]:
    """Encode `codes` (n, dim) with each codec and report bytes per user at `history_len` and RMSE / max |error|.

    PQ is trained on `codes` itself, as at publish time.
    """
    codes = np.ascontiguousarray(codes, np.float32)
    dim = codes.shape[1]
    out = []
    for name in codecs:
        if name == "int4" and dim % 2:
            continue
        codec = make_codec(name, dim)
        if not codec.fitted:
            codec.fit(codes)
        data, scales = codec.encode(codes)
        err = codec.decode(data, scales) - codes
        row = codec.bytes_per_row + (4 if codec.has_row_scale else 0) + TS_BYTES
        out.append(CodecReport(
            codec=name,
            bytes_per_row=codec.bytes_per_row + (4 if codec.has_row_scale else 0),
            bytes_per_user=history_len * row + USER_OVERHEAD_BYTES,
            rmse=float(np.sqrt(np.mean(err**2))) if err.size else 0.0,
            max_abs_error=float(np.abs(err).max()) if err.size else 0.0,
        ))
    return out
