"""TaobaoAd_x1 (the BARS / FuxiCTR preprocessing of Alibaba's Ad Display/Click data) as an EventLog.

The files are never downloaded here; users who have them pass their location. Layout (verified
against reczoo/Datasets `Taobao/TaobaoAd_x1/convert_taobaoad_x1.py` and the BARS FuxiCTR run
configs for `taobaoad_x1`): comma-separated with a header, columns in this order

    clk, btag_his, cate_his, brand_his, userid, cms_segid, cms_group_id, final_gender_code,
    age_level, pvalue_level, shopping_level, occupation, new_user_class_level, adgroup_id,
    cate_id, campaign_id, customer, brand, price, pid, btag

`*_his` hold up to 50 '^'-separated ids of the user's earlier behaviour; missing values were filled
with "0" by the converter. The benchmark ships `train.csv` (days 1-7, 21,929,911 rows) and
`test.csv` (day 8, 3,099,515 rows); FuxiCTR uses test.csv as the validation set too.

No time column: the converter drops `time_stamp`. `ts_ms` is therefore an ordinal, not a clock:
`TS_BASE_MS` (2017-05-06 00:00 UTC, the log's first day) + the row's position in the
concatenation train.csv, valid.csv, test.csv (each file in its own row order). Its train file is
`train_sorted.csv` of the DMR preprocessing and the test file is the later day, so file order is
the only time order the benchmark preserves. Every leakage guarantee of `splits.py` (train strictly
before test, per user or globally) then rests on that file order; a time split of this log at the
train/test file boundary reproduces the benchmark's own split (`meta["file_rows"]` gives sizes).

Mapping (ids remapped densely to 0..n-1 in ascending raw-id order over all loaded rows, so
train and test share one id space and ids index embedding tables):

- user_id = userid; ad_id = adgroup_id (the ad unit shown); advertiser_id = customer (the data
  set's advertiser id); campaign_id = campaign_id; category = cate_id (item category).
- placement = pid (the ad slot / "scenario"; two values in the real data), remapped densely.
- device = 0 and hour = 0: the layout has neither, and a constant carries no false signal.
- user_segment = gender * n_age + age_level, with gender (final_gender_code) and age_level each
  remapped densely first: the demographic targeting segment. Dense remapping, not the raw codes,
  because the DMR preprocessing re-encoded ids (PaddleRec issue #821), so raw codes are not
  guaranteed to be the small documented 1/2 and 0..6.
- bid = price (item price, float). The data has no bids; price is the one per-ad monetary value
  and stands in for the ad's value in expected-value ranking. Non-finite prices become 0.
- click = clk. conversion = 0 (no conversion label in this data). p_click / p_conversion = NaN.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from itertools import islice
from operator import itemgetter
from pathlib import Path

import numpy as np

from models.data.schema import EventLog, empty_columns

TAOBAO_X1_COLUMNS: tuple[str, ...] = (
    "clk", "btag_his", "cate_his", "brand_his", "userid", "cms_segid", "cms_group_id", "final_gender_code",
    "age_level", "pvalue_level", "shopping_level", "occupation", "new_user_class_level", "adgroup_id",
    "cate_id", "campaign_id", "customer", "brand", "price", "pid", "btag",
)
# The columns this loader reads; other columns may be absent or extra.
REQUIRED_COLUMNS: tuple[str, ...] = (
    "clk", "userid", "final_gender_code", "age_level", "adgroup_id", "cate_id", "campaign_id", "customer",
    "price", "pid",
)
SPLIT_FILES: tuple[str, ...] = ("train.csv", "valid.csv", "test.csv")
TS_BASE_MS = 1_494_028_800_000  # 2017-05-06 00:00:00 UTC, first day of the raw log
_CHUNK_ROWS = 1 << 20


def taobao_files(path: str | Path) -> list[Path]:
    """The CSV files to read, in time order: a single file, or train/valid/test.csv of a directory
    (whichever exist; the BARS release has no valid.csv)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = [path / name for name in SPLIT_FILES if (path / name).is_file()]
        if files:
            return files
        raise FileNotFoundError(f"{path} holds none of {list(SPLIT_FILES)} (TaobaoAd_x1 in the BARS CSV layout)")
    raise FileNotFoundError(f"{path} does not exist; pass a TaobaoAd_x1 CSV file or the directory holding them")


def _check_header(header: list[str], source: Path) -> list[int]:
    """Indices of REQUIRED_COLUMNS in `header`; a clear ValueError naming any that are missing."""
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{source} is not in the TaobaoAd_x1 layout: missing columns {missing}; "
                         f"expected a header like {list(TAOBAO_X1_COLUMNS)}")
    return [header.index(c) for c in REQUIRED_COLUMNS]


def _to_number(values: np.ndarray, dtype: type) -> np.ndarray:
    """String column -> numbers; empty fields (the converter's NaN) count as 0. Goes through
    float64 so "3" and "3.0" both parse; ids up to 2**53 survive exactly."""
    values = np.where(values == "", "0", values)
    return values.astype(np.float64).astype(dtype)


def _read_chunks(files: list[Path], max_rows: int | None) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (file name, string array rows x REQUIRED_COLUMNS) chunks, at most `max_rows` rows in all.

    The csv module does the parsing (quoted '^'-sequences with commas are handled); only the
    required fields are kept, and each chunk becomes one numpy array so later steps are vectorised.
    """
    left = max_rows
    for f in files:
        if left is not None and left <= 0:
            return
        with open(f, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader, [])]
            pick = itemgetter(*_check_header(header, f))
            while left is None or left > 0:
                n = _CHUNK_ROWS if left is None else min(_CHUNK_ROWS, left)
                try:
                    rows = [pick(r) for r in islice(reader, n) if r]
                except IndexError:
                    line = reader.line_num
                    raise ValueError(f"{f}: a row near line {line} has fewer fields than the header") from None
                if not rows:
                    break
                if left is not None:
                    left -= len(rows)
                yield f.name, np.array(rows, dtype=str).reshape(len(rows), len(REQUIRED_COLUMNS))


def _dense(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense 0..n-1 ids in ascending raw-value order, and n."""
    uniq, inverse = np.unique(values, return_inverse=True)
    return inverse.reshape(-1), len(uniq)


def load_taobao(path: str | Path, max_rows: int | None = None) -> EventLog:
    """Loads TaobaoAd_x1 CSVs (a file, or a directory with train/valid/test.csv) as click events.

    `max_rows` caps the total rows read, taken from the start in file order (train first), which
    keeps the earliest events: useful for quick runs on the 25M-row benchmark (parsing costs about
    10 us per row on one core, so the full benchmark takes a few minutes).
    """
    if max_rows is not None and max_rows < 0:
        raise ValueError(f"max_rows must be >= 0, got {max_rows}")
    files = taobao_files(path)
    idx = {c: i for i, c in enumerate(REQUIRED_COLUMNS)}
    parts: dict[str, list[np.ndarray]] = {c: [] for c in REQUIRED_COLUMNS if c != "pid"}
    pid_parts: list[np.ndarray] = []
    file_rows: dict[str, int] = {f.name: 0 for f in files}
    for name, chunk in _read_chunks(files, max_rows):
        file_rows[name] += len(chunk)
        for c in parts:
            parts[c].append(_to_number(chunk[:, idx[c]], np.float64 if c == "price" else np.int64))
        pid_parts.append(np.char.strip(chunk[:, idx["pid"]]))  # raw pids are strings like "430548_1007"

    n = sum(file_rows.values())
    num = {c: (np.concatenate(v) if v else np.zeros(0, np.float64 if c == "price" else np.int64))
           for c, v in parts.items()}
    pid = np.concatenate(pid_parts) if pid_parts else np.zeros(0, dtype=str)

    cols = empty_columns(n)
    cardinality: dict[str, int] = {"device": 1, "hour": 24}
    for target, raw in (("user_id", "userid"), ("ad_id", "adgroup_id"), ("advertiser_id", "customer"),
                        ("campaign_id", "campaign_id"), ("category", "cate_id")):
        cols[target][:], cardinality[target] = _dense(num[raw])
    cols["placement"][:], cardinality["placement"] = _dense(pid)
    gender, n_gender = _dense(num["final_gender_code"])
    age, n_age = _dense(num["age_level"])
    cols["user_segment"][:] = gender * max(n_age, 1) + age
    cardinality["user_segment"] = max(n_gender * n_age, 1)
    cardinality = {k: max(v, 1) for k, v in cardinality.items()}
    cols["ts_ms"][:] = TS_BASE_MS + np.arange(n, dtype=np.int64)
    price = num["price"]
    cols["bid"][:] = np.where(np.isfinite(price), price, 0.0)
    clk = num["clk"]
    if n and not np.isin(clk, (0, 1)).all():
        raise ValueError(f"column 'clk' must be 0/1, found values {np.unique(clk)[:5].tolist()}")
    cols["click"][:] = clk

    meta = {
        "n_events": int(n),
        "n_users": int(cardinality["user_id"]),
        "n_ads": int(cardinality["ad_id"]),
        "positive_rate": float(clk.mean()) if n else 0.0,
        "files": [str(f) for f in files],
        "file_rows": file_rows,
        "max_rows": max_rows,
        "ts_is_row_order": True,
    }
    return EventLog(cols, cardinality, "taobao", meta).sorted_by_time()
