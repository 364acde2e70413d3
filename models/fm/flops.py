"""Analytic multiply-add (MAC) count of one FoundationModel forward, per example and per component.

Counts the matmuls the implementation actually performs (a full causal attention computes all T×T
scores; the banded one T×w), so it matches `torch.utils.flop_counter` (FLOPs = 2·MACs) at batch 1
— a test holds it to that. Element-wise ops, norms, softmax and gathers are not counted: they are
a few percent at these widths and are not what CompSkip or windowing changes. Terms that depend
only on weights (seed query projections) are counted once per example, i.e. as at batch 1.

Example:
    >>> c = count_flops(FMConfig(), seq_len=256)
    >>> c["total"], c["attention"], c["gdpa"], c["hsp"], c["ffn"]
"""

from __future__ import annotations

from models.fm.config import FMConfig

COMPONENTS = ("personalization", "attention", "gdpa", "hsp", "ffn", "target_attention", "interaction", "head")


def _hsp_macs(cfg: FMConfig, t: int) -> int:
    d, s, so, k = cfg.d_model, cfg.n_seeds, cfg.n_summary, cfg.kron_rank
    seed_attention = s * d * d + 2 * t * d * d + 2 * s * t * d + s * d * d  # q, kv, scores+values, out
    sum_kron = k * s * d * d + k * so * s * d  # Σ_k A_k (X B_kᵀ), never the explicit Kronecker product
    return seed_attention + sum_kron


def count_flops(cfg: FMConfig, seq_len: int) -> dict[str, int]:
    """MACs per example for a history of `seq_len` events: one entry per component plus "total"."""
    d, t = cfg.d_model, seq_len
    n_ctx = cfg.n_ns_tokens + cfg.n_summary  # GDPA keys: non-sequence tokens + summary tokens
    # keys per query the implementation computes: the band is always w wide (left padding included)
    span = cfg.max_window if cfg.windowed else t
    c = dict.fromkeys(COMPONENTS, 0)
    c["personalization"] = t * (2 * d + 2 * d * sum(cfg.type_widths))  # age projection + typed adapter
    for kind in cfg.layer_kinds():
        c["attention"] += 4 * t * d * d + 2 * t * span * d  # qkv + out projections, scores + values
        if kind == "global":
            c["hsp"] += _hsp_macs(cfg, t)
            c["gdpa"] += 2 * t * d * d + 2 * n_ctx * d * d + 2 * t * n_ctx * d
        else:  # reused summary as extra keys of the window attention
            c["attention"] += 2 * cfg.n_summary * d * d + 2 * t * cfg.n_summary * d
        c["ffn"] += 2 * t * d * cfg.ffn_mult * d
    c["hsp"] += _hsp_macs(cfg, t)  # readout
    c["target_attention"] = cfg.n_ns_tokens * d * d + 2 * t * d * d + 2 * t * d + d * d
    if cfg.interaction:  # clicked − unclicked pooling over the history, then two per-head dot products
        c["interaction"] += t * d + 2 * d
    if cfg.interaction_category:  # the same pooling over the history's categories, one dot product
        c["interaction"] += t * d + d
    c["head"] = (cfg.dense_dim * d + cfg.hidden0_inputs * cfg.hidden_dim
                 + 2 * (cfg.hidden_dim * cfg.tower_dim + cfg.tower_dim))
    c["total"] = sum(c[k] for k in COMPONENTS)
    return c


def ablation_table(base: FMConfig, seq_len: int) -> dict[str, dict[str, int]]:
    """MACs of the four CompSkip × windowing variants of `base` (for reports and the ablation test)."""
    from dataclasses import replace

    return {f"compskip={cs},windowed={w}": count_flops(replace(base, compskip=cs, windowed=w), seq_len)
            for cs in (True, False) for w in (True, False)}
