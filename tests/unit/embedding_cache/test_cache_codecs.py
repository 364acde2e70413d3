"""Codecs: exactness where promised, LoopFM int4 semantics, PQ persistence, the size/error report."""

from __future__ import annotations

import numpy as np
import pytest

from embedding_cache import bytes_per_user, codec_report, make_codec
from embedding_cache.codecs import codec_from_manifest


def test_int4_matches_loopfm_formula() -> None:
    z = np.tanh(np.random.default_rng(0).standard_normal((100, 16))).astype(np.float32)
    codec = make_codec("int4", 16)
    data, scales = codec.encode(z)
    assert data.shape == (100, 8) and data.dtype == np.uint8
    np.testing.assert_array_equal(codec.decode(data, scales), np.clip(np.rint(8 * z), -8, 7) / 8)


def test_int4_error_bound_on_tanh_codes() -> None:
    """LoopFM's grid stops at 7/8: codes above 15/16 saturate (error up to 1/8), elsewhere at most 1/16."""
    z = np.random.default_rng(3).uniform(-1, 1, (1000, 10)).astype(np.float32)
    codec = make_codec("int4", 10)
    err = codec.decode(*codec.encode(z)) - z
    assert np.abs(err[z <= 15 / 16]).max() <= 1 / 16 + 1e-7
    assert np.abs(err).max() <= 1 / 8 + 1e-7


def test_int8_is_finer_than_int4_on_tanh_codes() -> None:
    z = np.tanh(np.random.default_rng(4).standard_normal((64, 16)) * 2).astype(np.float32)
    int8, int4 = make_codec("int8", 16), make_codec("int4", 16)
    err8 = np.abs(int8.decode(*int8.encode(z)) - z)
    assert (err8 <= 0.5 * np.abs(z).max(axis=1, keepdims=True) / 127 + 1e-7).all()  # half a step of the row scale
    assert err8.max() < np.abs(int4.decode(*int4.encode(z)) - z).max()


def test_int8_per_row_scale_and_float16() -> None:
    x = np.array([[100.0, -50.0], [0.001, 0.0], [0.0, 0.0]], np.float32)
    int8 = make_codec("int8", 2)
    np.testing.assert_allclose(int8.decode(*int8.encode(x)), x, rtol=1e-2, atol=1e-6)
    f16 = make_codec("float16", 2)
    np.testing.assert_allclose(f16.decode(*f16.encode(x)), x, rtol=1e-3)


def test_pq_state_round_trip() -> None:
    x = np.random.default_rng(1).standard_normal((2000, 16)).astype(np.float32)
    pq = make_codec("pq", 16)
    pq.fit(x)
    data, scales = pq.encode(x)
    assert data.shape == (2000, 4)
    again = codec_from_manifest(pq.params(), pq.state())
    np.testing.assert_array_equal(again.decode(data, scales), pq.decode(data, scales))


def test_report_orders_codecs_by_size() -> None:
    z = np.tanh(np.random.default_rng(2).standard_normal((3000, 32))).astype(np.float32)
    report = {r.codec: r for r in codec_report(z, history_len=64)}
    assert report["float32"].rmse == 0.0
    sizes = [report[c].bytes_per_user for c in ("float32", "float16", "int8", "int4", "pq")]
    assert sizes == sorted(sizes, reverse=True)
    assert report["int8"].rmse < report["int4"].rmse < report["pq"].rmse
    assert bytes_per_user("int8", 32, 64) == report["int8"].bytes_per_user == 64 * (32 + 4 + 8) + 16


def test_unknown_codec_and_odd_int4() -> None:
    with pytest.raises(ValueError, match="unknown codec"):
        make_codec("int2", 8)
    with pytest.raises(ValueError, match="even"):
        make_codec("int4", 7)
