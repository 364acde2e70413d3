"""Errors keep their meaning: each typed error has its own status, `grpc_status` is the one mapping,
and cache, Triton and onnxruntime errors become the typed error that says what failed."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
import serving_fakes as fakes

import embedding_cache
from serving import errors
from serving.errors import (
    BackendTimeout,
    BackendUnavailable,
    DataLoss,
    InferenceFailed,
    InvalidRequest,
    ModelLoadError,
    ModelNotFound,
    ModelNotReady,
    Overloaded,
    RankingError,
    grpc_status,
)
from serving.history import lookup_error, open_error

S = grpc.StatusCode


@pytest.mark.parametrize(("error", "code"), [
    (InvalidRequest, S.INVALID_ARGUMENT), (ModelNotFound, S.NOT_FOUND), (ModelNotReady, S.FAILED_PRECONDITION),
    (ModelLoadError, S.FAILED_PRECONDITION), (Overloaded, S.RESOURCE_EXHAUSTED), (BackendUnavailable, S.UNAVAILABLE),
    (BackendTimeout, S.DEADLINE_EXCEEDED), (DataLoss, S.DATA_LOSS), (InferenceFailed, S.INTERNAL),
])
def test_each_typed_error_keeps_its_status_and_message(error, code):
    assert grpc_status(error("what failed: and why")) == (code, "what failed: and why")


def test_every_typed_error_is_in_the_table():
    typed = {c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, RankingError)} - {RankingError}
    for cls in typed:
        assert f"| {cls.__name__} " in errors.__doc__, cls.__name__


def test_anything_else_is_internal_without_its_details():
    assert grpc_status(KeyError("secret internals")) == (S.INTERNAL, errors.INTERNAL_MESSAGE)


def test_a_timeout_is_a_kind_of_unavailability():
    assert issubclass(BackendTimeout, BackendUnavailable)


# --- Triton ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "message", "error"), [
    ("StatusCode.NOT_FOUND", "Request for unknown model: 'vm' version 9 is not found", ModelNotFound),
    ("StatusCode.UNAVAILABLE", "'vm' version 2 is not at ready state", ModelNotReady),
    ("StatusCode.UNAVAILABLE", "failed to connect to all addresses", BackendUnavailable),
    ("StatusCode.INVALID_ARGUMENT", "unexpected shape for input 'dense'", InvalidRequest),
    ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", BackendTimeout),
    ("StatusCode.RESOURCE_EXHAUSTED", "queue full", BackendUnavailable),
    ("StatusCode.CANCELLED", "Cancelled", BackendUnavailable),
    ("StatusCode.INTERNAL", "model execution failed", InferenceFailed),
])
def test_triton_statuses_map_to_their_own_errors(status, message, error):
    from tritonclient.utils import InferenceServerException

    from serving.backends.triton import map_triton_error

    got = map_triton_error(InferenceServerException(message, status=status), "vm/1")
    assert type(got) is error
    assert str(got) == f"vm/1: Triton {status.removeprefix('StatusCode.')}: {message}"


def test_triton_without_a_status_is_unavailable_or_a_timeout():
    from serving.backends.triton import map_triton_error

    assert type(map_triton_error(ConnectionRefusedError("refused"), "Triton at h:1")) is BackendUnavailable
    assert type(map_triton_error(TimeoutError(), "Triton at h:1")) is BackendTimeout


# --- onnxruntime ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_session(tmp_path_factory):
    """A two-output graph (p_ctr = p_cvr = sigmoid(x), x float32 [batch]) in an EmbeddedBackend."""
    import onnx
    from onnx import TensorProto, helper

    from serving.backends.embedded import EmbeddedBackend

    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["p_ctr"]), helper.make_node("Sigmoid", ["x"], ["p_cvr"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch"])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch"]) for n in ("p_ctr", "p_cvr")])
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    backend = EmbeddedBackend(path.parent)
    handle = fakes.handle()
    backend._sessions[("vm", 1)] = backend._session(path)
    backend._handles[("vm", 1)] = handle
    return backend, handle


def test_onnxruntime_runs_and_refusals_are_typed(tiny_session):
    backend, handle = tiny_session
    result = asyncio.run(backend.infer(handle, {"x": np.zeros(3, np.float32)}))
    np.testing.assert_allclose(result.p_ctr, 0.5)
    with pytest.raises(InvalidRequest, match=r"^vm/1: onnxruntime InvalidArgument: .*x"):
        asyncio.run(backend.infer(handle, {"x": np.zeros(3, np.int64)}))  # wrong dtype
    with pytest.raises(InferenceFailed, match=r"^vm/1: onnxruntime ValueError: .*missing"):
        asyncio.run(backend.infer(handle, {}))


def test_an_unloaded_version_is_not_found(tiny_session):
    backend, _ = tiny_session
    with pytest.raises(ModelNotFound, match=r"vm/7 is not loaded; loaded versions \[1\]"):
        asyncio.run(backend.infer(fakes.handle(version=7), {}))


# --- embedding cache ------------------------------------------------------------------------------

def _caused(error: Exception, cause: Exception) -> Exception:
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(("make", "error", "words"), [
    (lambda e: e.InvalidLookupError("L=9000 exceeds 4096"), InvalidRequest, "refused the lookup: L=9000"),
    (lambda e: e.CacheUnavailableError("redis at r:1 unavailable"), BackendUnavailable, "unavailable: redis at r:1"),
    (lambda e: _caused(e.CacheUnavailableError("redis at r:1 unavailable: Timeout reading"), TimeoutError()),
     BackendTimeout, "timed out: redis at r:1"),
    (lambda e: e.SnapshotNotFoundError("s7 gone"), BackendUnavailable, "snapshot gone, retry: s7"),
    (lambda e: e.CorruptSnapshotError("codes.bin sha256 differs"), DataLoss, "corrupt: codes.bin"),
    (lambda e: e.FmVersionMismatchError("fm-b"), ModelNotReady, "other codes than the model needs: fm-b"),
])
def test_cache_lookup_errors_keep_their_meaning(make, error, words):
    got = lookup_error(make(embedding_cache))
    assert type(got) is error and words in str(got)


def test_opening_a_cache_unreachable_is_unavailable_and_anything_else_not_ready():
    e = embedding_cache
    assert type(open_error(e.CacheUnavailableError("redis down"), "fm-a")) is BackendUnavailable
    timeout = _caused(e.CacheUnavailableError("slow"), type("TimeoutError", (Exception,), {})())  # redis-py's
    assert type(open_error(timeout, "fm-a")) is BackendTimeout
    got = open_error(e.FmVersionMismatchError("store has no fm-a"), "fm-a")
    assert type(got) is ModelNotReady and "no usable snapshot of 'fm-a'" in str(got)
