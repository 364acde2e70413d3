"""No leakage: an example sees only FM codes from strictly before its own time, never its own or a
later one, and only codes of the FM version its VM is trained with."""

import numpy as np
import pytest

from embedding_cache import EmbeddedWriter, open_reader
from models.data.schema import EventLog, empty_columns
from models.embed import FmVersionLeak, cache_history, publish_codes
from models.history import FM_HISTORY, FM_HISTORY_MASK


def _events_with_ties() -> EventLog:
    # 3 users; many events share a millisecond, others are 1 ms apart (near-equal)
    rng = np.random.default_rng(0)
    n = 400
    cols = empty_columns(n)
    cols["user_id"][:] = rng.integers(0, 3, n)
    cols["ts_ms"][:] = 1_700_000_000_000 + rng.integers(0, 40, n) * np.where(rng.random(n) < 0.5, 1, 1000)
    cols["ad_id"][:] = rng.integers(0, 50, n)
    cols["bid"][:] = 1.0
    card = {"user_id": 3, "ad_id": 50, "advertiser_id": 1, "campaign_id": 1, "category": 1, "placement": 1,
            "device": 1, "hour": 24, "user_segment": 1}
    return EventLog(cols, card, "test").sorted_by_time()


def test_no_example_sees_its_own_or_a_later_code(tmp_path):
    events = _events_with_ties()
    n = len(events)
    # each row's code encodes its row number, so we can tell exactly which events were returned
    codes = np.zeros((n, 2), np.float32)
    codes[:, 0] = (np.arange(n) + 1) / (n + 1)
    publish_codes(tmp_path, "fm-a", events, np.arange(n), codes, codec="float32")
    source = cache_history(open_reader("embedded", tmp_path, "fm-a"), events, "fm-a")
    tensors = source(np.arange(n), 64)
    hist, mask = tensors[FM_HISTORY], tensors[FM_HISTORY_MASK]
    row_of = np.rint(hist[..., 0] * (n + 1)).astype(int) - 1
    users, ts = events["user_id"], events["ts_ms"]
    for i in range(n):
        seen = row_of[i][mask[i] > 0]
        earlier = np.flatnonzero((users == users[i]) & (ts < ts[i]))
        if len(earlier) == 0:  # cold start: one prior entry, not any event of the log
            assert mask[i].sum() == 1 and hist[i, 0, 1] == 0.0
            continue
        assert i not in seen, "an example must not see its own code"
        assert np.all(ts[seen] < ts[i]), "nor one from its own millisecond or later"
        assert np.all(users[seen] == users[i])
        assert len(seen) == min(64, len(earlier))


def test_codes_of_another_fm_version_are_never_read(tmp_path):
    events = _events_with_ties()
    n = len(events)
    publish_codes(tmp_path, "fm-a", events, np.arange(n), np.full((n, 2), 0.25, np.float32), codec="float32")
    publish_codes(tmp_path, "fm-b", events, np.arange(n), np.full((n, 2), -0.75, np.float32), codec="float32")
    tensors = cache_history(open_reader("embedded", tmp_path, "fm-a"), events, "fm-a")(np.arange(n), 8)
    hist, mask = tensors[FM_HISTORY], tensors[FM_HISTORY_MASK]
    assert np.all(hist[mask > 0] == 0.25)  # fm-b codes (-0.75) never appear, not even in the prior
    with pytest.raises(FmVersionLeak, match="fm-b"):
        cache_history(open_reader("embedded", tmp_path, "fm-b"), events, "fm-a")


def test_train_and_test_rows_read_one_fm_version(tmp_path):
    events = _events_with_ties()
    n = len(events)
    writer = EmbeddedWriter(tmp_path, "fm-a", dim=2, codec="float32")
    writer.append_user_codes(events["user_id"], events["ts_ms"], np.full((n, 2), 0.5, np.float32))
    writer.publish()
    reader = open_reader("embedded", tmp_path, "fm-a")
    train_rows, test_rows = np.arange(n // 2), np.arange(n // 2, n)
    hb_train = reader.user_history(events["user_id"][train_rows], events["ts_ms"][train_rows], 8)
    hb_test = reader.user_history(events["user_id"][test_rows], events["ts_ms"][test_rows], 8)
    assert hb_train.fm_version == hb_test.fm_version == "fm-a"
