"""Ranking metrics in numpy: AUC, normalized entropy (NE), calibration, transfer ratio.

NE = log loss / entropy of the base rate (He et al., 2014): 1.0 means "no better than predicting the
average"; lower is better. Transfer ratio TR = ΔNE_VM / ΔNE_FM (LoopFM / ExFM): the share of the FM's
gain over the baseline that reaches the VM.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-7


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve via the rank-sum statistic, averaging ranks over tied scores."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    r = (ends - (counts - 1) / 2.0)[inverse]  # average 1-based rank of each tied run
    return float((r[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probs, dtype=np.float64), EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def normalized_entropy(labels: np.ndarray, probs: np.ndarray) -> float:
    y = np.asarray(labels, dtype=np.float64)
    base = float(np.clip(y.mean(), EPS, 1 - EPS))
    entropy = -(base * np.log(base) + (1 - base) * np.log(1 - base))
    return log_loss(y, probs) / entropy


def calibration(labels: np.ndarray, probs: np.ndarray) -> float:
    """Sum of predictions / sum of labels: 1.0 is calibrated, > 1 over-predicts."""
    return float(np.sum(probs, dtype=np.float64) / max(EPS, float(np.sum(labels, dtype=np.float64))))


def transfer_ratio(ne_baseline: float, ne_vm: float, ne_fm: float) -> float:
    """ΔNE_VM / ΔNE_FM with Δ measured from the VM baseline (positive when both improve)."""
    gain_fm = ne_baseline - ne_fm
    if gain_fm <= 0:
        return float("nan")
    return (ne_baseline - ne_vm) / gain_fm


def summarize(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    return {"auc": auc(labels, probs), "ne": normalized_entropy(labels, probs), "calibration": calibration(labels, probs),
            "n": int(len(labels))}
