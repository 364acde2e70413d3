"""Event data: one columnar schema for every source, and time-based splits that cannot leak.

Usage::

    from models.data import load_dataset, time_split
    events = load_dataset("synthetic", n_events=100_000, seed=7)
    train, test = time_split(events, test_fraction=0.2)
"""

from models.data.schema import EVENT_COLUMNS, EventLog, SchemaError
from models.data.sources import load_dataset
from models.data.splits import per_user_chronological_split, per_user_split_mask, time_split, time_split_mask

__all__ = [
    "EVENT_COLUMNS",
    "EventLog",
    "SchemaError",
    "load_dataset",
    "per_user_chronological_split",
    "per_user_split_mask",
    "time_split",
    "time_split_mask",
]
