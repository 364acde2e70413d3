"""What a history lookup returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_new = object.__new__


@dataclass(frozen=True)
class HistoryBatch:
    """The most recent codes of B users strictly before each user's request time, MOST RECENT FIRST.

    Row b holds `lengths[b]` valid entries: `codes[b, 0]` is the newest code with timestamp < t[b],
    `codes[b, 1]` the one before it, and so on; positions `>= lengths[b]` are zero (codes) and 0
    (timestamps). Equal timestamps keep append order, the later append counting as more recent.

    A user with no code before t gets the population prior as a single entry (`lengths[b] == 1`,
    `timestamps[b, 0] == 0`) and `fallback[b] == True`, so the service can score the request and still flag
    it as degraded (VMs are trained with FM-history dropout for exactly this case).

    Attributes:
        codes: float32 [B, L, dim], zero padded.
        lengths: int64 [B], valid entries per row.
        timestamps: int64 [B, L], ms since epoch, 0 padded.
        fallback: bool [B], True where the row is the cold-start prior rather than real history.
        snapshot_id: the snapshot every row was read from (one snapshot per call, never a mix).
        fm_version: the FM version the codes come from.
    """

    codes: np.ndarray
    lengths: np.ndarray
    timestamps: np.ndarray
    fallback: np.ndarray
    snapshot_id: str
    fm_version: str

    @classmethod
    def of_request(cls, codes: np.ndarray, lengths: np.ndarray, timestamps: np.ndarray, fallback: np.ndarray,
                   snapshot_id: str, fm_version: str) -> HistoryBatch:
        """The same object as the constructor, built without the frozen-dataclass __init__.

        That __init__ sets each field through object.__setattr__ (~0.7 us); a lookup builds one batch per
        request, so the request path fills the instance dict directly (~0.3 us). Fields are not re-checked.
        """
        batch = _new(cls)
        fields = batch.__dict__
        fields["codes"] = codes
        fields["lengths"] = lengths
        fields["timestamps"] = timestamps
        fields["fallback"] = fallback
        fields["snapshot_id"] = snapshot_id
        fields["fm_version"] = fm_version
        return batch

    @property
    def degraded(self) -> bool:
        """Whether any row fell back to the cold-start prior."""
        return bool(self.fallback.any())
