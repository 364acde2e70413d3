"""MovieLens-100K as a click task, read from the copy shipped inside the `recbole==1.2.1` wheel.

Why this source: it is the one real interaction log available offline (see
shared/notes/data-and-deps.md). We never import recbole (it pulls torch/ray at import time) and never
copy the files into the repository (GroupLens terms forbid redistribution); we only locate the files
through the installed distribution's metadata.

Mapping of a rating to an ad event (every choice is a stand-in, chosen so the event schema's
semantics survive):

- user_id: the user token, remapped densely to 0..942 in ascending token order, so ids index
  embedding tables directly.
- ad_id: the item token, remapped densely to 0..1681 the same way; the "ad" is the movie shown.
- ts_ms: rating timestamp (seconds) * 1000. Timestamps are rating-entry times, and many ratings
  of one user share a second; splits must therefore be tie-aware (`splits.py` is).
- click: rating >= 4 ("the user liked what was shown"): 55.4% positives.
- conversion: rating == 5, a stronger signal that only exists where there is a click, which is
  exactly the schema's "conversion after a click" contract.
- category: the item's first listed genre as an index into the 19 ML-100K genres (`GENRES`, in
  the data set's own u.genre order, so ML's own "unknown" genre is 0); an item with no genre gets
  the extra id 19 (`NO_GENRE`). First genre, not multi-hot, because the schema has one category.
- advertiser_id: release-decade bucket of the movie (`YEAR_BUCKET_EDGES`; unparsable years ->
  the extra last bucket). An advertiser owns many ads that share traits; a decade is the coarsest
  item attribute that groups many movies with similar audiences, which is the role an advertiser
  id plays for a ranking model (a shared, coarser embedding than ad_id).
- campaign_id: equal to ad_id. ML has no level between "item" and "decade"; inventing one would
  add noise, and a campaign-per-ad is a legal (if degenerate) ad hierarchy.
- placement, device: 0. The data has no such context; a constant column carries no signal.
- hour: UTC hour of the timestamp (rating entry hour, the only time-of-day signal there is).
- user_segment: age bucket (`AGE_BUCKET_EDGES`, the 7 MovieLens-1M age groups) * 2 + gender
  (M=0, F=1), 14 segments: the demographic targeting segments ads systems use.
- bid: 1.0 for every row. There is no auction; a constant bid makes expected-value ranking reduce
  to click ranking instead of inventing a price signal.
- p_click / p_conversion: NaN, because the true probabilities of a real log are unknown.
"""

from __future__ import annotations

import csv
import importlib.metadata
from pathlib import Path

import numpy as np

from models.data.schema import EventLog, empty_columns

DIST_NAME = "recbole"
DATA_DIR = "recbole/dataset_example/ml-100k"
INSTALL_HINT = "pip install --no-deps recbole==1.2.1"

GENRES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
NO_GENRE = len(GENRES)  # 19: items whose genre field is empty or unrecognised

# Decade edges: bucket i holds years in [edge[i-1], edge[i]); before 1930 -> 0, 1990s -> 7.
YEAR_BUCKET_EDGES = np.array([1930, 1940, 1950, 1960, 1970, 1980, 1990], dtype=np.int64)
N_YEAR_BUCKETS = len(YEAR_BUCKET_EDGES) + 2  # + the open last decade + "unknown year"
UNKNOWN_YEAR = N_YEAR_BUCKETS - 1

# MovieLens-1M age groups: <18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+.
AGE_BUCKET_EDGES = np.array([18, 25, 35, 45, 50, 56], dtype=np.int64)
N_AGE_BUCKETS = len(AGE_BUCKET_EDGES) + 1
N_GENDERS = 2


class MovieLensNotFoundError(FileNotFoundError):
    """The ML-100K files are not installed; the message says how to install them."""


def ml100k_path(ext: str) -> Path:
    """Path of `ml-100k.<ext>` inside the installed recbole wheel (the file may not exist).

    Exposed as the single locator so tests (and users with the files elsewhere) can replace it.
    """
    try:
        dist = importlib.metadata.distribution(DIST_NAME)
    except importlib.metadata.PackageNotFoundError as exc:
        raise MovieLensNotFoundError(
            f"MovieLens-100K is read from the {DIST_NAME} wheel, which is not installed; run `{INSTALL_HINT}`"
        ) from exc
    return Path(str(dist.locate_file(f"{DATA_DIR}/ml-100k.{ext}")))


def _require(ext: str) -> Path:
    path = ml100k_path(ext)
    if not path.is_file():
        raise MovieLensNotFoundError(
            f"MovieLens-100K file {path} is missing; install the data with `{INSTALL_HINT}`"
        )
    return path


def _read_atomic(path: Path) -> dict[str, list[str]]:
    """Reads a RecBole atomic file (tab-separated, header `name:type`) into columns of strings.

    Columns are looked up by name, not position, so a reordered file still loads correctly.
    """
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [h.split(":", 1)[0] for h in next(reader)]
        rows = [r + [""] * (len(header) - len(r)) for r in reader if r]
    return {name: [r[i] for r in rows] for i, name in enumerate(header)}


def _read_interactions(path: Path) -> dict[str, np.ndarray]:
    """The 100k-row .inter file parsed by numpy's C reader (columns found by header name)."""
    with open(path, encoding="utf-8") as fh:
        header = [h.split(":", 1)[0] for h in fh.readline().rstrip("\n").split("\t")]
    wanted = ("user_id", "item_id", "rating", "timestamp")
    missing = [c for c in wanted if c not in header]
    if missing:
        raise ValueError(f"{path} lacks columns {missing}")
    data = np.loadtxt(path, delimiter="\t", skiprows=1, usecols=[header.index(c) for c in wanted],
                      dtype=np.float64, ndmin=2)
    return {c: data[:, i] for i, c in enumerate(wanted)}


def _lookup(tokens: np.ndarray, keys: np.ndarray, what: str) -> np.ndarray:
    """Positions of `tokens` in the sorted unique `keys`; a token absent from `keys` is an error,
    because silently giving it a default feature would corrupt every event of that user/item."""
    pos = np.searchsorted(keys, tokens)
    pos = np.minimum(pos, len(keys) - 1)
    bad = keys[pos] != tokens
    if np.any(bad):
        raise ValueError(f"{what} {sorted(set(tokens[bad].tolist()))[:5]} have no row in the feature file")
    return pos


def _item_features(item: dict[str, list[str]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted item tokens, first-genre category, release-decade bucket) per item of the .item file."""
    tokens = np.array(item["item_id"], dtype=np.int64)
    genre_index = {g: i for i, g in enumerate(GENRES)}
    first = [(c.split() or [""])[0] for c in item["class"]]
    category = np.array([genre_index.get(g, NO_GENRE) for g in first], dtype=np.int32)
    year_str = np.array(item["release_year"])
    is_year = np.char.isdigit(year_str)
    years = np.where(is_year, year_str, "0").astype(np.int64)
    bucket = np.where(is_year, np.searchsorted(YEAR_BUCKET_EDGES, years, side="right"), UNKNOWN_YEAR)
    order = np.argsort(tokens)
    return tokens[order], category[order], bucket.astype(np.int64)[order]


def _user_features(user: dict[str, list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """(sorted user tokens, age-bucket * 2 + gender segment) per user of the .user file."""
    tokens = np.array(user["user_id"], dtype=np.int64)
    age = np.array(user["age"], dtype=np.int64)
    gender = (np.array(user["gender"]) == "F").astype(np.int64)
    segment = np.searchsorted(AGE_BUCKET_EDGES, age, side="right") * N_GENDERS + gender
    order = np.argsort(tokens)
    return tokens[order], segment.astype(np.int32)[order]


def load_movielens(seed: int = 0) -> EventLog:
    """All 100,000 ML-100K ratings as click events, sorted by (ts_ms, user_id).

    `seed` is accepted for the common loader signature and ignored: the data is a fixed log and
    no sampling happens here, so the result is identical for every seed.
    """
    del seed
    inter = _read_interactions(_require("inter"))
    item_tokens, item_category, item_decade = _item_features(_read_atomic(_require("item")))
    user_tokens, user_segment = _user_features(_read_atomic(_require("user")))

    users = inter["user_id"].astype(np.int64)
    items = inter["item_id"].astype(np.int64)
    rating = inter["rating"]
    ts_s = inter["timestamp"].astype(np.int64)

    uniq_users, user_id = np.unique(users, return_inverse=True)
    uniq_items, ad_id = np.unique(items, return_inverse=True)
    item_row = _lookup(uniq_items, item_tokens, "items")
    user_row = _lookup(uniq_users, user_tokens, "users")

    cols = empty_columns(len(users))
    cols["user_id"][:] = user_id
    cols["ad_id"][:] = ad_id
    cols["campaign_id"][:] = ad_id
    cols["advertiser_id"][:] = item_decade[item_row][ad_id]
    cols["category"][:] = item_category[item_row][ad_id]
    cols["user_segment"][:] = user_segment[user_row][user_id]
    cols["ts_ms"][:] = ts_s * 1000
    cols["hour"][:] = (ts_s // 3600) % 24
    cols["bid"][:] = 1.0
    click = rating >= 4
    cols["click"][:] = click
    cols["conversion"][:] = click & (rating == 5)

    cardinality = {
        "user_id": len(uniq_users),
        "ad_id": len(uniq_items),
        "campaign_id": len(uniq_items),
        "advertiser_id": N_YEAR_BUCKETS,
        "category": NO_GENRE + 1,
        "placement": 1,
        "device": 1,
        "hour": 24,
        "user_segment": N_AGE_BUCKETS * N_GENDERS,
    }
    meta = {
        "n_users": int(len(uniq_users)),
        "n_items": int(len(uniq_items)),
        "n_events": int(len(users)),
        "positive_rate": float(click.mean()),
        "conversion_rate": float(cols["conversion"].mean()),
        "ts_min_s": int(ts_s.min()),
        "ts_max_s": int(ts_s.max()),
        "task": "click = rating >= 4, conversion = rating == 5",
    }
    return EventLog(cols, cardinality, "movielens", meta).sorted_by_time()
