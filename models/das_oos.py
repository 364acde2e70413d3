"""Out-of-sample DAS logs: every logged FM prediction comes from an FM that did not train on that example.

Why: the in-sample log (`train_fm`'s own pass over the rows it fitted) hands KD the FM's predictions on
its training rows, which are better than anything it predicts on fresh traffic (seed 0 of the default
profile: FM NE 0.798 on the VMs' training rows against 0.847 on their test rows), so it flatters KD. A
production DAS logs the FM that is serving when the request arrives, which has not seen that request.

Two ways to get such a log, both kept because they answer different questions:

* **progressive** (the production reading): the training range is cut by time into `windows` equal
  slices; the rows of slice w are logged by an FM trained on slices 0 … w-1 only. The teacher is
  out-of-sample *and* stale, as in production, and weaker in the early slices (less data). Slice 0 has
  no earlier data, so it is not logged: KD skips those rows (`fit_vm` distils only logged rows).
* **kfold** (by user): users are hashed into `folds` groups; fold f's training rows are logged by an FM
  trained on every other fold's training rows. Every row is logged, each teacher sees (K-1)/K of the
  data at all times, so it isolates "in-sample vs not" from staleness. Folds are by user (not by row)
  because the FM reads a user's history: a row-level fold would train on the same user's neighbouring
  events and labels, which the held-out row's history shares.

Test rows are logged by the main FM (trained on the whole training range, which precedes them).
`producer[i]` names the FM that logged row i and `trained_on[p]` the rows FM p trained on (its fit and
validation rows), so the no-leak property is a checkable fact: `assert_out_of_sample`.

Usage::

    log = out_of_sample_log(data, fm_config, "kfold", main_logits=fm.logits, folds=3)
    assert_out_of_sample(log)
    write_das(path, version, events["event_id"][log.logged], log.logits[log.logged], source=events.source)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from models.fm_pipeline import FMTrainConfig, train_fm
from models.train import VMData

OUT_OF_SAMPLE = ("kfold", "progressive")
MAIN_FM = -2  # producer id of the main FM (test rows)
NOT_LOGGED = -1


@dataclass
class OutOfSampleLog:
    method: str
    logits: np.ndarray  # float32 [N], NaN where no FM logged the row
    producer: np.ndarray  # int32 [N]: the fold / window FM that logged the row, MAIN_FM, or NOT_LOGGED
    trained_on: dict[int, np.ndarray]  # producer id → the rows that FM trained on (fit + validation)
    teacher_ne: dict[int, float]  # producer id → that FM's test NE (all placements)

    @property
    def logged(self) -> np.ndarray:
        return self.producer != NOT_LOGGED


class LeakError(AssertionError):
    """A logged prediction came from an FM that trained on that very example."""


def user_folds(user_id: np.ndarray, folds: int) -> np.ndarray:
    """A stable fold per user (a multiplicative hash, so the folds do not follow user id order)."""
    h = (user_id.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(33)
    return (h % np.uint64(folds)).astype(np.int32)


def time_windows(data: VMData, windows: int) -> np.ndarray:
    """Window index (0 … windows-1) of every training row: equal-count slices of the training range by time."""
    train = data.train_idx
    order = np.argsort(data.events["ts_ms"][train], kind="stable")
    window = np.empty(len(train), np.int32)
    window[order] = (np.arange(len(train)) * windows) // max(1, len(train))
    return window


def out_of_sample_log(data: VMData, config: FMTrainConfig, method: str, *, main_logits: np.ndarray,
                      folds: int = 3, windows: int = 4,
                      log: Callable[[str], None] = print) -> OutOfSampleLog:
    """Trains the fold / window FMs (the same config as the main FM) and assembles the log."""
    if method not in OUT_OF_SAMPLE:
        raise ValueError(f"out-of-sample DAS method must be one of {OUT_OF_SAMPLE}, got {method!r}")
    n = len(data.events)
    logits = np.full(n, np.nan, np.float32)
    producer = np.full(n, NOT_LOGGED, np.int32)
    trained_on: dict[int, np.ndarray] = {}
    teacher_ne: dict[int, float] = {}
    train = data.train_idx
    if method == "kfold":
        if folds < 2:
            raise ValueError(f"kfold needs at least 2 folds, got {folds}")
        group = user_folds(data.events["user_id"][train], folds)
        plan = [(f, train[group != f], train[group == f]) for f in range(folds)]
    else:
        if windows < 2:
            raise ValueError(f"progressive needs at least 2 windows, got {windows}")
        group = time_windows(data, windows)
        plan = [(w, train[group < w], train[group == w]) for w in range(1, windows)]
    for pid, fit_rows, logged_rows in plan:
        fm = train_fm(replace(data, train_idx=fit_rows), config, progress=False)
        logits[logged_rows] = fm.logits[logged_rows]
        producer[logged_rows] = pid
        trained_on[pid] = fit_rows
        teacher_ne[pid] = float(fm.metrics["test"]["ctr_ne"])
        log(f"  DAS {method} FM {pid}: trained on {len(fit_rows):,} rows, logs {len(logged_rows):,}; "
            f"test NE {teacher_ne[pid]:.4f}")
    logits[data.test_idx] = main_logits[data.test_idx]
    producer[data.test_idx] = MAIN_FM
    trained_on[MAIN_FM] = train
    return OutOfSampleLog(method, logits, producer, trained_on, teacher_ne)


def assert_out_of_sample(log: OutOfSampleLog) -> None:
    """Raises LeakError when any logged row is among the rows its producing FM trained on."""
    for pid, rows in log.trained_on.items():
        produced = np.flatnonzero(log.producer == pid)
        leaked = np.intersect1d(produced, rows)
        if len(leaked):
            raise LeakError(f"{len(leaked):,} rows were logged by FM {pid}, which trained on them "
                            f"(first: row {int(leaked[0])})")
    if np.isnan(log.logits[log.logged]).any() or not np.isnan(log.logits[~log.logged]).all():
        raise LeakError("the logged mask and the logits disagree")
