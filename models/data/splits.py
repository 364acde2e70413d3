"""Time-based splits. Every split guarantees train timestamps strictly precede test timestamps
(globally for `time_split`, per user for `per_user_chronological_split`), so no training example
can carry information from the test period. Ties at the boundary go wholly to one side."""

from __future__ import annotations

import numpy as np

from models.data.schema import EventLog


def time_split_mask(events: EventLog, test_fraction: float = 0.2) -> np.ndarray:
    """True for test rows: ts >= cutoff, cutoff at the (1 - test_fraction) quantile of timestamps.
    Masks let callers build history features on the whole log, then split rows."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    ts = events["ts_ms"]
    cutoff = int(np.quantile(ts, 1.0 - test_fraction, method="higher"))
    return ts >= cutoff


def time_split(events: EventLog, test_fraction: float = 0.2) -> tuple[EventLog, EventLog]:
    """Global cut: every train timestamp is strictly below every test timestamp."""
    is_test = time_split_mask(events, test_fraction)
    return events.take(~is_test), events.take(is_test)


def per_user_chronological_split(events: EventLog, test_fraction: float = 0.1) -> tuple[EventLog, EventLog]:
    """See `per_user_split_mask`."""
    is_test = per_user_split_mask(events, test_fraction)
    return events.take(~is_test), events.take(is_test)


def per_user_split_mask(events: EventLog, test_fraction: float = 0.1) -> np.ndarray:
    """True for test rows. Last `test_fraction` of each user's events go to test; a user's events sharing the boundary
    timestamp all go to test, so every train event of a user is strictly older than its test events."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    users, ts = events["user_id"], events["ts_ms"]
    order = np.lexsort((ts, users))
    u_sorted, ts_sorted = users[order], ts[order]
    starts = np.flatnonzero(np.r_[True, u_sorted[1:] != u_sorted[:-1]])
    counts = np.diff(np.r_[starts, len(order)])
    n_test = np.maximum(1, np.floor(counts * test_fraction).astype(np.int64))
    n_test = np.minimum(n_test, counts - 1)  # keep at least one train event per user
    boundary_pos = starts + counts - n_test  # first test row per user (in sorted order)
    boundary_ts = np.repeat(ts_sorted[np.minimum(boundary_pos, len(order) - 1)], counts)
    has_test = np.repeat(n_test > 0, counts)
    is_test_sorted = has_test & (ts_sorted >= boundary_ts)
    is_test = np.empty(len(order), dtype=bool)
    is_test[order] = is_test_sorted
    return is_test
