"""ScoreColumns on the real server process through a real channel: the same candidates as rows and as
columns get bit-identical scores and order, and bad columnar input is INVALID_ARGUMENT naming the
field and the limit."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from models.catalog import load_catalog
from protos.adrank.v1 import ranking_pb2, ranking_pb2_grpc
from serving.client import build_request, ranked_arrays, rows_from_columns, to_columns
from serving.process import ServerProcess


@pytest.fixture(scope="module")
def server(tiny_run: Path):
    with ServerProcess(["--repository", str(tiny_run / "model_repository"), "--max-candidates", "300"]) as srv:
        yield srv
    assert srv.proc.returncode == 0, srv.log_text()[-2000:]


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.target) as ch:
        yield ranking_pb2_grpc.AdRankingStub(ch)


@pytest.fixture(scope="module")
def catalog(tiny_run: Path):
    return load_catalog(tiny_run / "catalog.npz")


def _request(catalog, n: int = 200, seed: int = 3, **kw) -> ranking_pb2.ScoreRequest:
    return build_request(int(catalog["user_id"][5]), n, catalog, seed=seed,
                         request_time_ms=int(catalog["max_ts_ms"][0]), **kw)


@pytest.mark.parametrize("top_k", [None, 17])
def test_rows_and_columns_score_the_same_candidates_identically(stub, catalog, top_k):
    req = _request(catalog)
    if top_k:
        req.top_k = top_k
    rows = stub.Score(req, timeout=10)
    cols = stub.ScoreColumns(to_columns(req), timeout=10)
    got = ranked_arrays(cols)
    assert len(got["ad_id"]) == len(rows.candidates) == (top_k or 200)
    assert got["ad_id"].tolist() == [c.ad_id for c in rows.candidates]
    assert got["request_index"].tolist() == [c.request_index for c in rows.candidates]
    # bit-identical: both went through the same stages from validate to rank
    np.testing.assert_array_equal(got["p_ctr"], np.array([c.p_ctr for c in rows.candidates], np.float32))
    np.testing.assert_array_equal(got["p_cvr"], np.array([c.p_cvr for c in rows.candidates], np.float32))
    np.testing.assert_array_equal(got["expected_value"], [c.expected_value for c in rows.candidates])
    assert np.all(np.diff(got["expected_value"]) <= 0) and np.all(np.isfinite(got["expected_value"]))
    assert cols.served_by == rows.served_by and list(cols.flags) == list(rows.flags)
    assert cols.request_time_ms == rows.request_time_ms and cols.timing.total_us > 0
    as_rows = rows_from_columns(cols)
    assert list(as_rows.candidates) == list(rows.candidates)  # every field, rank included


def test_score_cli_sends_columns(server, tiny_run, catalog):
    import json
    import subprocess
    import sys

    argv = [sys.executable, "-m", "adrank", "score", "--target", server.target, "--user",
            str(int(catalog["user_id"][5])), "--catalog", str(tiny_run / "catalog.npz"), "--candidates", "30", "--json"]
    rows, cols = (json.loads(subprocess.run(argv + extra, capture_output=True, text=True, timeout=60,
                                            check=True).stdout) for extra in ([], ["--columns"]))
    assert len(rows["candidates"]) == 30  # one message per candidate
    assert cols["candidates"]["ad_id"]["length"] == 30 and cols["candidates"]["p_ctr"]["dtype"] == "DTYPE_FLOAT32"
    table = subprocess.run(argv[:-1] + ["--columns"], capture_output=True, text=True, timeout=60, check=True).stdout
    assert "30 ads ranked by vm v1" in table


def _code_and_details(stub, req) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        stub.ScoreColumns(req, timeout=10)
    return err.value.code(), err.value.details()


def test_bad_columns_are_invalid_argument_naming_the_field_and_limit(stub, catalog):
    good = to_columns(_request(catalog, n=10))
    cases = []
    req = ranking_pb2.ScoreColumnsRequest()
    req.CopyFrom(good)
    req.candidates.bid.length, req.candidates.bid.data = 9, req.candidates.bid.data[:72]
    cases.append((req, "candidates.bid: length 9 differs from candidates.ad_id length 10"))
    req = ranking_pb2.ScoreColumnsRequest()
    req.CopyFrom(good)
    req.candidates.category.dtype = ranking_pb2.DTYPE_INT64
    cases.append((req, "candidates.category: dtype must be DTYPE_INT32, got DTYPE_INT64"))
    req = ranking_pb2.ScoreColumnsRequest()
    req.CopyFrom(good)
    req.candidates.ad_id.data = req.candidates.ad_id.data[:-4]
    cases.append((req, "candidates.ad_id: 76 bytes of data do not hold length 10 × 8 bytes (DTYPE_INT64)"))
    req = ranking_pb2.ScoreColumnsRequest()
    req.CopyFrom(good)
    bids = np.frombuffer(good.candidates.bid.data, "<f8").copy()
    bids[6] = np.nan
    req.candidates.bid.data = bids.tobytes()
    cases.append((req, "candidates[6].bid: must be finite, >= 0 and <= max_bid 1e+06, got nan"))
    over = to_columns(_request(catalog, n=301, seed=4))
    cases.append((over, "candidates: 301 candidates exceed the limit of 300"))
    for req, message in cases:
        code, details = _code_and_details(stub, req)
        assert code is grpc.StatusCode.INVALID_ARGUMENT, details
        assert details.startswith(message), details


def test_undecodable_columns_body_is_invalid_argument(server):
    with grpc.insecure_channel(server.target) as ch:
        call = ch.unary_unary("/adrank.v1.AdRanking/ScoreColumns", request_serializer=None,
                              response_deserializer=None)
        with pytest.raises(grpc.RpcError) as err:
            call(b"\xff\xff", timeout=10)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "adrank.v1.ScoreColumnsRequest (2 bytes)" in err.value.details()
