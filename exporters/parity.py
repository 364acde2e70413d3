"""Parity figures between an exported graph and eager PyTorch, in the one format manifests record.

Every exporter (ONNX, TorchScript) reports the same three numbers so a reader of manifest.json can
compare formats side by side: the largest absolute error, the largest relative error (relative to
the reference, floored at 1e-6 so near-zero probabilities do not explode it) and the example count.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

REL_FLOOR = 1e-6


def max_errors(got: Sequence[np.ndarray], ref: Sequence[np.ndarray]) -> dict[str, float]:
    """`{"max_abs", "max_rel", "n"}` over paired outputs (e.g. (p_ctr, p_cvr) from both sides).

    >>> max_errors([np.array([0.5, 0.25])], [np.array([0.5, 0.2])])["max_abs"]
    0.05
    """
    if len(got) != len(ref):
        raise ValueError(f"{len(got)} outputs to compare against {len(ref)} reference outputs")
    abs_err = 0.0
    rel_err = 0.0
    for g, r in zip(got, ref, strict=True):
        g64, r64 = np.asarray(g, np.float64), np.asarray(r, np.float64)
        if g64.shape != r64.shape:
            raise ValueError(f"output shape {g64.shape} differs from the reference's {r64.shape}")
        diff = np.abs(g64 - r64)
        abs_err = max(abs_err, float(diff.max(initial=0.0)))
        rel_err = max(rel_err, float((diff / np.maximum(np.abs(r64), REL_FLOOR)).max(initial=0.0)))
    return {"max_abs": round(abs_err, 12), "max_rel": round(rel_err, 12), "n": int(len(ref[0]) if ref else 0)}
