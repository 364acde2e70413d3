"""FallbackBackend in process: which side infers as the breaker opens, probes and closes, which errors
it answers for, and a primary down at start. A fake primary stands beside the real-Triton fault test
(tests/integration/test_faults_triton.py), which SIGKILLs a real tritonserver under load."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serving.backends.base import InferenceBackend, InferenceResult, ModelHandle
from serving.backends.fallback import FallbackBackend
from serving.breaker import CircuitBreaker
from serving.errors import BackendUnavailable, InvalidRequest, ModelLoadError


class Side(InferenceBackend):
    """A backend serving ("m", 1) and ("m", 2); `error` makes every call (and start) raise it."""

    def __init__(self, name: str, versions=(1, 2)) -> None:
        self.name = name
        self._handles = {("m", v): ModelHandle("m", v, None, None) for v in versions}  # type: ignore[arg-type]
        self.error: Exception | None = None
        self.calls = 0
        self.start_error: Exception | None = None

    async def start(self) -> None:
        if self.start_error is not None:
            raise self.start_error

    async def infer(self, handle, inputs) -> InferenceResult:
        self.calls += 1
        if self.error is not None:
            raise self.error
        value = np.full(2, handle.version, dtype=np.float32)
        return InferenceResult(value, value)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _backend(primary_versions=(1, 2)):
    clock = Clock()
    primary, fallback = Side("triton", primary_versions), Side("embedded")
    return FallbackBackend(primary, fallback, CircuitBreaker(2, 1.0, clock=clock)), primary, fallback, clock


def _who(backend: FallbackBackend, version: int = 1) -> str:
    result = asyncio.run(backend.infer(backend.resolve("m", version), {}))
    assert result.p_ctr[0] == version  # the version asked for, whoever computed it
    return result.backend


def test_outage_falls_back_per_request_opens_probes_and_closes() -> None:
    backend, primary, fallback, clock = _backend()
    asyncio.run(backend.start())
    assert _who(backend) == "triton"
    primary.error = BackendUnavailable("Triton at h:1: connection refused")
    assert [_who(backend), _who(backend)] == ["embedded", "embedded"]  # failures answered, breaker opens
    assert backend.breaker.state == "open" and primary.calls == 3
    assert _who(backend, 2) == "embedded" and primary.calls == 3  # open: the primary is not called
    clock.t = 1.5
    assert _who(backend) == "embedded" and primary.calls == 4  # the probe fails: open again
    primary.error = None
    clock.t = 3.0
    assert _who(backend) == "triton" and backend.breaker.is_closed  # the probe succeeds: closed
    assert backend.fallback_calls == 4 and asyncio.run(backend.ready())


def test_malformed_input_is_not_an_outage() -> None:
    backend, primary, _, _ = _backend()
    asyncio.run(backend.start())
    primary.error = InvalidRequest("inputs: wrong shape")
    for _ in range(3):
        with pytest.raises(InvalidRequest):
            asyncio.run(backend.infer(backend.resolve("m", 1), {}))
    assert backend.breaker.is_closed and backend.fallback_calls == 0


def test_primary_down_at_start_serves_the_fallback_and_joins_on_a_probe() -> None:
    backend, primary, _, clock = _backend()
    primary.start_error = BackendUnavailable("Triton at h:1: connection refused")
    asyncio.run(backend.start())  # does not raise: the fallback serves
    assert backend.breaker.state == "open" and _who(backend) == "embedded"
    clock.t = 1.5
    assert _who(backend) == "embedded"  # the probe's start fails
    primary.start_error = None
    clock.t = 3.0
    assert _who(backend) == "triton"


def test_versions_resolve_to_those_both_sides_serve() -> None:
    backend, _, _, _ = _backend(primary_versions=(1, 2, 3))
    assert backend.models() == {"m": [1, 2]}


def test_a_fallback_that_cannot_load_leaves_the_primary_alone_as_with_fail() -> None:
    backend, primary, fallback, _ = _backend(primary_versions=(1, 2, 3))
    fallback.start_error = ModelLoadError("no loadable model in /models")
    asyncio.run(backend.start())
    assert not backend.has_fallback and backend.models() == {"m": [1, 2, 3]}
    primary.error = BackendUnavailable("Triton at h:1: connection refused")
    with pytest.raises(BackendUnavailable):
        asyncio.run(backend.infer(backend.resolve("m", 3), {}))
    assert fallback.calls == 0
    primary.start_error = BackendUnavailable("Triton at h:1: connection refused")
    with pytest.raises(BackendUnavailable):  # and then the primary is needed at start
        asyncio.run(FallbackBackend(primary, fallback, CircuitBreaker(2, 1.0)).start())


class LoadingSide(Side):
    """A Side that hot-loads and unloads versions; `load_error` makes loading raise it."""

    def __init__(self, name: str, versions=(1,)) -> None:
        super().__init__(name, versions)
        self.load_error: Exception | None = None

    async def load_version(self, name: str, version: int) -> ModelHandle:
        if self.load_error is not None:
            raise self.load_error
        handle = ModelHandle(name, version, None, None)  # type: ignore[arg-type]
        self._handles = {**self._handles, (name, version): handle}  # replaced, as the real backends do
        return handle

    async def unload_version(self, name: str, version: int) -> None:
        if len([k for k in self._handles if k[0] == name]) == 1:
            raise ModelLoadError(f"{name}: {version} is the last version")
        self._handles = {k: v for k, v in self._handles.items() if k != (name, version)}


def _loading():
    primary, fallback = LoadingSide("triton"), LoadingSide("embedded")
    return FallbackBackend(primary, fallback, CircuitBreaker(2, 1.0)), primary, fallback


def test_hot_load_reaches_both_sides_and_the_version_resolves_only_then() -> None:
    backend, primary, fallback = _loading()
    asyncio.run(backend.load_version("m", 2))
    assert ("m", 2) in primary._handles and ("m", 2) in fallback._handles
    assert backend.models() == {"m": [1, 2]}
    asyncio.run(backend.unload_version("m", 2))
    assert ("m", 2) not in primary._handles and ("m", 2) not in fallback._handles


def test_hot_load_with_the_primary_down_keeps_the_fallback_copy_and_routes_only_what_both_have() -> None:
    backend, primary, fallback = _loading()
    primary.load_error = BackendUnavailable("triton down")
    asyncio.run(backend.load_version("m", 2))
    assert ("m", 2) in fallback._handles and ("m", 2) not in primary._handles
    assert backend.models() == {"m": [1]}  # never a version only one side can compute
    primary.load_error = None
    asyncio.run(backend.load_version("m", 2))  # the primary is back: a later load reaches it
    assert backend.models() == {"m": [1, 2]}


def test_a_refused_unload_leaves_both_sides_as_they_were() -> None:
    backend, primary, fallback = _loading()
    with pytest.raises(ModelLoadError, match="last version"):
        asyncio.run(backend.unload_version("m", 1))
    assert ("m", 1) in primary._handles and ("m", 1) in fallback._handles


def test_a_primary_load_that_is_not_an_outage_propagates() -> None:
    backend, primary, _ = _loading()
    primary.load_error = ModelLoadError("m/2: manifest invalid")
    with pytest.raises(ModelLoadError, match="manifest invalid"):
        asyncio.run(backend.load_version("m", 2))


def test_the_repository_both_sides_read_is_the_backends_repository(tmp_path) -> None:
    backend, primary, fallback = _loading()
    assert backend.repository is None  # sides without one
    primary.repository = tmp_path / "repo"
    assert backend.repository == tmp_path / "repo"  # the rollout reads unloaded versions' manifests there


def test_an_aside_inference_goes_to_each_sides_aside_path_and_falls_back_alike() -> None:
    backend, primary, fallback, _ = _backend()
    asides: list[str] = []

    def recording(side: Side):
        async def infer_aside(handle, inputs):
            asides.append(side.name)
            return await side.infer(handle, inputs)
        return infer_aside

    primary.infer_aside, fallback.infer_aside = recording(primary), recording(fallback)  # type: ignore[method-assign]
    asyncio.run(backend.start())
    result = asyncio.run(backend.infer_aside(backend.resolve("m", 2), {}))
    assert result.backend == "triton" and result.p_ctr[0] == 2 and asides == ["triton"]
    primary.error = BackendUnavailable("Triton at h:1: connection refused")
    result = asyncio.run(backend.infer_aside(backend.resolve("m", 1), {}))
    # the primary's aside path is tried and fails, then the fallback's answers: one failure counted
    assert result.backend == "embedded" and asides == ["triton", "triton", "embedded"]
    assert backend.breaker.consecutive_failures == 1
