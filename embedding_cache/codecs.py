"""Code compression: float32, float16, int8 (per-row scale), int4 (LoopFM) and faiss product quantization.

Every codec turns float32 codes `(n, dim)` into fixed-width bytes `(n, bytes_per_row)` plus an optional
float32 scale per row. Fixed width is what lets the embedded store gather rows with one fancy index and
the Redis store pack a user's rows into one value. Decoding is one or two vectorized numpy operations
(a lookup table for int4, faiss for PQ) so it stays cheap on the request path.

    >>> codec = make_codec("int8", dim=4)
    >>> data, scales = codec.encode(np.array([[0.5, -1.0, 0.0, 0.25]], np.float32))
    >>> codec.decode(data, scales).round(2).tolist()
    [[0.5, -1.0, 0.0, 0.25]]
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

CODEC_NAMES: tuple[str, ...] = ("float32", "float16", "int8", "int4", "pq")
_EMPTY_SCALES = np.zeros(0, np.float32)


class Codec(ABC):
    """Fixed-width encoding of `dim`-wide float32 codes."""

    name: ClassVar[str]
    has_row_scale: ClassVar[bool] = False

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim

    @property
    @abstractmethod
    def bytes_per_row(self) -> int:
        """Bytes of one encoded row (the per-row scale, if any, is stored apart)."""

    @property
    def fitted(self) -> bool:
        """Whether encode() can run; only PQ must first learn codebooks."""
        return True

    def fit(self, x: np.ndarray) -> None:  # noqa: B027 - optional hook, no-op by default
        """Learn whatever the codec needs from sample codes (no-op for the scalar codecs)."""

    def state(self) -> dict[str, np.ndarray]:
        """Arrays to persist with a snapshot so a reader decodes exactly as the writer encoded."""
        return {}

    def params(self) -> dict[str, int | str]:
        """Small JSON-able parameters recorded in the manifest."""
        return {"codec": self.name, "dim": self.dim}

    @abstractmethod
    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 (n, dim) -> (uint8 (n, bytes_per_row), float32 scales (n,) or empty)."""

    @abstractmethod
    def decode(self, data: np.ndarray, scales: np.ndarray) -> np.ndarray:
        """uint8 (n, bytes_per_row) [+ scales] -> float32 (n, dim)."""


class Float32Codec(Codec):
    """Lossless reference; 4 bytes per dimension."""

    name = "float32"

    @property
    def bytes_per_row(self) -> int:
        return 4 * self.dim

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(x, np.float32)
        return x.view(np.uint8).reshape(len(x), self.bytes_per_row), _EMPTY_SCALES

    def decode(self, data: np.ndarray, scales: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(data).view(np.float32).reshape(len(data), self.dim)


class Float16Codec(Codec):
    """Half precision: 2 bytes per dimension, relative error ~5e-4, no scale needed."""

    name = "float16"

    @property
    def bytes_per_row(self) -> int:
        return 2 * self.dim

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = np.ascontiguousarray(x, np.float32).astype(np.float16)
        return h.view(np.uint8).reshape(len(x), self.bytes_per_row), _EMPTY_SCALES

    def decode(self, data: np.ndarray, scales: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(data).view(np.float16).reshape(len(data), self.dim).astype(np.float32)


class Int8Codec(Codec):
    """Symmetric int8 with one float32 scale per row (max |x| / 127), so rows of any magnitude keep precision."""

    name = "int8"
    has_row_scale = True

    @property
    def bytes_per_row(self) -> int:
        return self.dim

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, np.float32)
        scale = np.abs(x).max(axis=1) / 127.0 if len(x) else np.zeros(0, np.float32)
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        q = np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8)
        return q.view(np.uint8), scale

    def decode(self, data: np.ndarray, scales: np.ndarray) -> np.ndarray:
        out = data.view(np.int8).astype(np.float32)
        out *= scales[:, None]
        return out


def _int4_table() -> np.ndarray:
    """Byte -> its two dequantized nibbles (low nibble first); one fancy index decodes a whole row."""
    b = np.arange(256)
    lo = ((b & 0xF) - 8) / 8.0
    hi = ((b >> 4) - 8) / 8.0
    return np.stack([lo, hi], axis=1).astype(np.float32)


class Int4Codec(Codec):
    """LoopFM INT4: round(8z).clamp(-8, 7) / 8 for tanh-bounded codes, two codes per byte.

    No scale: the codes are in [-1, 1] by construction (tanh), so the fixed step 1/8 is the paper's choice
    and values outside [-1, 0.875] are clipped.
    """

    name = "int4"
    _TABLE = _int4_table()

    def __init__(self, dim: int) -> None:
        if dim % 2:
            raise ValueError(f"int4 packs two codes per byte; dim must be even, got {dim}")
        super().__init__(dim)

    @property
    def bytes_per_row(self) -> int:
        return self.dim // 2

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = (np.clip(np.rint(np.asarray(x, np.float32) * 8.0), -8, 7) + 8).astype(np.uint8)
        packed = q[:, 0::2] | (q[:, 1::2] << 4)
        return np.ascontiguousarray(packed), _EMPTY_SCALES

    def decode(self, data: np.ndarray, scales: np.ndarray) -> np.ndarray:
        return self._TABLE[data].reshape(len(data), self.dim)


def faiss_gpus() -> int:
    """GPUs faiss can use: > 0 only with a faiss-gpu build on a host with CUDA devices."""
    import faiss

    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


class PQCodec(Codec):
    """faiss ProductQuantizer: `m` sub-vectors of `dim/m` dims, 2**nbits centroids each; m bytes per row at 8 bits.

    Codebooks are trained at the first publish of an fm_version and then reused by later snapshots of that
    version, so rows carried over from an older snapshot keep their bytes (re-quantizing would add error
    at every publish). A fixed FM checkpoint keeps the code distribution stable, which is why that is safe.
    """

    name = "pq"

    def __init__(self, dim: int, m: int | None = None, nbits: int = 8) -> None:
        super().__init__(dim)
        self.m = m if m is not None else max(1, dim // 4)
        if dim % self.m:
            raise ValueError(f"pq: dim {dim} must be divisible by m {self.m}")
        self.nbits = nbits
        self._pq = None  # faiss.ProductQuantizer once fitted

    @property
    def bytes_per_row(self) -> int:
        return (self.m * self.nbits + 7) // 8

    @property
    def fitted(self) -> bool:
        return self._pq is not None

    def params(self) -> dict[str, int | str]:
        return {**super().params(), "m": self.m, "nbits": self.nbits}

    def fit(self, x: np.ndarray, max_train: int = 65_536, seed: int = 0) -> None:
        import faiss

        x = np.ascontiguousarray(x, np.float32)
        if len(x) > max_train:
            x = x[np.random.default_rng(seed).choice(len(x), max_train, replace=False)]
        # faiss needs at least 2**nbits training points per sub-quantizer; small stores get smaller codebooks.
        self.nbits = int(max(1, min(self.nbits, math.floor(math.log2(max(len(x), 2))))))
        pq = faiss.ProductQuantizer(self.dim, self.m, self.nbits)
        pq.verbose = False
        pq.cp.min_points_per_centroid = 1  # small stores are legitimate; silence faiss' sample-size warning
        gpu_index = None
        if faiss_gpus() > 0:  # a faiss-gpu build on a CUDA host: k-means assignment runs on the GPUs
            gpu_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(self.dim // self.m))
            pq.assign_index = gpu_index  # not owned by pq: `gpu_index` stays referenced until training ends
        pq.train(x)
        pq.assign_index = None
        del gpu_index
        self._pq = pq

    def state(self) -> dict[str, np.ndarray]:
        import faiss

        if self._pq is None:
            raise RuntimeError("pq codec is not fitted")
        return {"pq_centroids": faiss.vector_to_array(self._pq.centroids).astype(np.float32)}

    def load_state(self, centroids: np.ndarray) -> None:
        """Rebuild the quantizer from persisted centroids (no retraining)."""
        import faiss

        pq = faiss.ProductQuantizer(self.dim, self.m, self.nbits)
        faiss.copy_array_to_vector(np.ascontiguousarray(centroids, np.float32).ravel(), pq.centroids)
        self._pq = pq

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._pq is None:
            raise RuntimeError("pq codec must be fitted before encode()")
        return self._pq.compute_codes(np.ascontiguousarray(x, np.float32)), _EMPTY_SCALES

    def decode(self, data: np.ndarray, scales: np.ndarray) -> np.ndarray:
        if self._pq is None:
            raise RuntimeError("pq codec is not fitted")
        if len(data) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self._pq.decode(np.ascontiguousarray(data, np.uint8))


_CODECS: dict[str, type[Codec]] = {c.name: c for c in (Float32Codec, Float16Codec, Int8Codec, Int4Codec, PQCodec)}


def make_codec(name: str, dim: int, **params: int) -> Codec:
    """Build a codec by name (one of CODEC_NAMES); `params` are codec-specific (pq: m, nbits)."""
    if name not in _CODECS:
        raise ValueError(f"unknown codec {name!r}; choose one of {', '.join(CODEC_NAMES)}")
    return _CODECS[name](dim, **params)


def codec_from_manifest(params: dict, state: dict[str, np.ndarray]) -> Codec:
    """Rebuild the exact codec a snapshot was written with."""
    name = str(params["codec"])
    extra = {k: int(params[k]) for k in ("m", "nbits") if k in params}
    codec = make_codec(name, int(params["dim"]), **extra)
    if isinstance(codec, PQCodec):
        codec.load_state(state["pq_centroids"])
    return codec
