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


def test_request_tensors_are_history_tensors_of_one_user():
    from models.history import FM_HISTORY_MASK, history_tensors, mask_rows, request_tensors

    codes = np.arange(5 * 3, dtype=np.float32).reshape(1, 5, 3)
    index = np.zeros(4, np.int64)
    for n in range(1, 6):
        want = history_tensors(codes, np.array([n]), 5, 3, index)
        got = request_tensors(codes, mask_rows(5)[n], index)
        assert set(got) == set(want)
        assert all(got[k].tobytes() == want[k].tobytes() and got[k].dtype == want[k].dtype for k in want)
        assert not got[FM_HISTORY_MASK].flags.writeable  # one shared table: no request can change it
