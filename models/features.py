"""The one feature code path shared by training and serving (numpy only: serving imports no torch).

A model sees three tensors per candidate row:

* ``sparse`` int64 [B, F]: one index per categorical field, each already offset into a single shared
  embedding table (field f occupies ``[offset_f, offset_f + size_f]``; the last slot of each field is
  its out-of-vocabulary bucket, so unknown ids at serving time never index out of range);
* ``recent`` int64 [B, K]: the user's K latest engaged categories (newest first), offset like a field,
  padded with the field's padding slot;
* ``dense`` float32 [B, D]: log1p(bid) followed by the candidate's dense features (zero padded).

Training builds these from an `EventLog`; serving from a request. `tests/unit/test_features.py`
checks the two agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np

from models.history import StrictlyBefore
from models.vocab import DEVICES, PLACEMENTS

# Categorical fields, in tensor column order: (field name, EventLog column).
SPARSE_FIELDS: tuple[str, ...] = (
    "ad_id", "advertiser_id", "campaign_id", "category", "placement", "device", "hour", "user_segment",
)


@dataclass(frozen=True)
class FeatureSpec:
    """Sizes of every field; saved in the model manifest so serving builds identical tensors."""

    field_sizes: tuple[int, ...]  # per SPARSE_FIELDS entry, excluding the OOV slot
    recent_k: int = 5
    dense_width: int = 4  # 1 (log bid) + up to dense_width - 1 candidate dense features

    @classmethod
    def from_cardinality(cls, cardinality: Mapping[str, int], *, recent_k: int = 5,
                         dense_width: int = 4) -> FeatureSpec:
        sizes = []
        for f in SPARSE_FIELDS:
            size = int(cardinality[f])
            if f == "placement":
                size = max(size, len(PLACEMENTS))
            if f == "device":
                size = max(size, len(DEVICES))
            sizes.append(size)
        return cls(tuple(sizes), recent_k, dense_width)

    @property
    def n_fields(self) -> int:
        return len(self.field_sizes)

    @cached_property
    def sizes(self) -> np.ndarray:
        """field_sizes as an int64 array (the OOV slot of field j is index sizes[j] within the field)."""
        return np.asarray(self.field_sizes, dtype=np.int64)

    @cached_property
    def offsets(self) -> np.ndarray:
        """Start of each field in the shared table; each field has size + 1 slots (the last is OOV)."""
        return np.cumsum([0, *[s + 1 for s in self.field_sizes]])[:-1].astype(np.int64)

    @property
    def recent_offset(self) -> int:
        """The recent-categories bag has its own block: n_categories + 1 slots, the last being padding."""
        return int(self.offsets[-1] + self.field_sizes[-1] + 1)

    @property
    def n_categories(self) -> int:
        return self.field_sizes[SPARSE_FIELDS.index("category")]

    @property
    def vocab_size(self) -> int:
        return self.recent_offset + self.n_categories + 1

    @property
    def max_extra_dense(self) -> int:
        return self.dense_width - 1

    def to_dict(self) -> dict:
        d = asdict(self)
        d["field_sizes"] = list(self.field_sizes)
        d["fields"] = list(SPARSE_FIELDS)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> FeatureSpec:
        if list(d.get("fields", SPARSE_FIELDS)) != list(SPARSE_FIELDS):
            raise ValueError(f"feature fields {d.get('fields')} differ from this build's {list(SPARSE_FIELDS)}")
        return cls(tuple(int(s) for s in d["field_sizes"]), int(d["recent_k"]), int(d["dense_width"]))


def assemble(
    spec: FeatureSpec,
    columns: Mapping[str, np.ndarray],
    recent_categories: np.ndarray,
    bid: np.ndarray,
    extra_dense: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Builds model inputs from per-row columns (every SPARSE_FIELDS key, length B, or one value for
    every row); an id outside 0..size-1 of its field maps to the field's OOV slot. Also the recent
    categories [B, K'] (-1 = none; newest first), bids [B] and optional extra dense features [B, E]."""
    b = len(bid)
    raw = np.empty((b, spec.n_fields), dtype=np.int64)
    for j, name in enumerate(SPARSE_FIELDS):
        raw[:, j] = columns[name]  # a column, or one value broadcast over the rows
    # _index over every field at once: one pass over B × fields instead of one per field
    sizes = spec.sizes
    sparse = np.where((raw >= 0) & (raw < sizes), raw, sizes) + spec.offsets
    n_cat = spec.n_categories
    rc = np.full((b, spec.recent_k), -1, dtype=np.int64)
    k = min(spec.recent_k, recent_categories.shape[1]) if recent_categories.ndim == 2 else 0
    if k:
        rc[:, :k] = recent_categories[:, :k]
    # padding (-1) and unknown categories share the bag's last slot; the model masks it out
    recent = np.where((rc >= 0) & (rc < n_cat), rc, n_cat) + spec.recent_offset
    dense = np.zeros((b, spec.dense_width), dtype=np.float32)
    dense[:, 0] = np.log1p(np.asarray(bid, dtype=np.float32))
    if extra_dense is not None and extra_dense.size:
        e = extra_dense.shape[1]
        if e > spec.max_extra_dense:
            raise ValueError(f"{e} dense features exceed the model's limit of {spec.max_extra_dense}")
        dense[:, 1:1 + e] = extra_dense
    return {"sparse": sparse, "recent": recent, "dense": dense}


def recent_categories_from_log(user_id: np.ndarray, ts_ms: np.ndarray, category: np.ndarray, click: np.ndarray,
                               k: int) -> np.ndarray:
    """For every event, the categories of the user's last k clicks with timestamp strictly before it
    (newest first, -1 padded). Vectorized; the strictly-before rule is `models.history.StrictlyBefore`'s."""
    groups = StrictlyBefore(user_id, ts_ms)
    order = groups.order
    clk = click[order].astype(np.int64)
    visible = groups.count_before(clk)  # the user's clicks strictly before each (sorted) row
    click_cats = category[order].astype(np.int64)[np.flatnonzero(clk)]
    first_click_of_user = (np.cumsum(clk) - clk)[groups.user_start_sorted]  # index into click_cats
    out_sorted = np.full((len(user_id), k), -1, dtype=np.int64)
    for j in range(k):  # k is small (≈5): a loop over columns, not rows
        has = visible > j
        idx = first_click_of_user + visible - 1 - j
        out_sorted[has, j] = click_cats[idx[has]]
    out = np.empty_like(out_sorted)
    out[order] = out_sorted
    return out


def features_from_events(spec: FeatureSpec, events) -> dict[str, np.ndarray]:
    """Model inputs for every row of an `EventLog` (training and offline evaluation)."""
    recent = recent_categories_from_log(events["user_id"], events["ts_ms"], events["category"], events["click"],
                                        spec.recent_k)
    return assemble(spec, {f: events[f] for f in SPARSE_FIELDS}, recent, events["bid"])


def vocab_index(vocab: tuple[str, ...], value: str) -> int:
    """Index of a context string; unknown and empty strings map to 0 ("other")."""
    try:
        return vocab.index(value.lower())
    except ValueError:
        return 0


def features_for_request(spec: FeatureSpec, *, ad_id: np.ndarray, advertiser_id: np.ndarray, campaign_id: np.ndarray,
                         category: np.ndarray, bid: np.ndarray, placement: int, device: int, hour: int,
                         user_segment: int, recent_categories: np.ndarray,
                         extra_dense: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Model inputs for one request: user and context features broadcast over its N candidates."""
    n = len(ad_id)
    columns = {  # the request-wide values stay scalars: assemble broadcasts them over the candidates
        "ad_id": ad_id, "advertiser_id": advertiser_id, "campaign_id": campaign_id, "category": category,
        "placement": placement, "device": device, "hour": hour, "user_segment": user_segment,
    }
    recent = np.broadcast_to(np.asarray(recent_categories, np.int64)[None, :], (n, len(recent_categories)))
    return assemble(spec, columns, recent, np.asarray(bid, np.float32), extra_dense)
