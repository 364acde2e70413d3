import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from models.history import HistoryIndex


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 12)), min_size=1, max_size=60), st.integers(1, 8))
def test_before_returns_exactly_the_most_recent_strictly_earlier_events(pairs, max_len):
    user = np.array([p[0] for p in pairs], dtype=np.int64)
    ts = np.array([p[1] for p in pairs], dtype=np.int64)  # many ties on purpose
    idx = HistoryIndex(user, ts)
    rows, mask = idx.before(np.arange(len(user)), max_len)
    for i in range(len(user)):
        got = rows[i][mask[i]]
        assert np.all(user[got] == user[i])
        assert np.all(ts[got] < ts[i]), "an example must never see its own or a later/simultaneous event"
        candidates = np.flatnonzero((user == user[i]) & (ts < ts[i]))
        assert len(got) == min(max_len, len(candidates))
        # newest first, and nothing newer was skipped
        assert np.all(np.diff(ts[got]) <= 0)
        if len(got):
            skipped = np.setdiff1d(candidates, got)
            assert len(skipped) == 0 or ts[skipped].max() <= ts[got].min()
        assert np.all(rows[i][~mask[i]] == -1)
