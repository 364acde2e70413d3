from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StartRolloutRequest(_message.Message):
    __slots__ = ("spec_toml", "actor", "reason")
    SPEC_TOML_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    spec_toml: str
    actor: str
    reason: str
    def __init__(self, spec_toml: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class StageRequest(_message.Message):
    __slots__ = ("model", "version", "actor", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    actor: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ShadowRequest(_message.Message):
    __slots__ = ("model", "version", "sample_rate", "actor", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    sample_rate: float
    actor: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., sample_rate: _Optional[float] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RolloutTarget(_message.Message):
    __slots__ = ("model", "actor", "reason")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    model: str
    actor: str
    reason: str
    def __init__(self, model: _Optional[str] = ..., actor: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class VersionInfo(_message.Message):
    __slots__ = ("version", "state", "fm_version", "loaded")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FM_VERSION_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    version: int
    state: str
    fm_version: str
    loaded: bool
    def __init__(self, version: _Optional[int] = ..., state: _Optional[str] = ..., fm_version: _Optional[str] = ..., loaded: _Optional[bool] = ...) -> None: ...

class CheckInfo(_message.Message):
    __slots__ = ("name", "status", "value", "has_value", "bound", "message")
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    HAS_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOUND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    name: str
    status: str
    value: float
    has_value: bool
    bound: str
    message: str
    def __init__(self, name: _Optional[str] = ..., status: _Optional[str] = ..., value: _Optional[float] = ..., has_value: _Optional[bool] = ..., bound: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class WindowInfo(_message.Message):
    __slots__ = ("at_ms", "weight", "action", "live_requests", "canary_requests", "live_p99_ms", "canary_p99_ms", "canary_error_rate", "psi", "p_ctr_ratio", "checks")
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    LIVE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    CANARY_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    LIVE_P99_MS_FIELD_NUMBER: _ClassVar[int]
    CANARY_P99_MS_FIELD_NUMBER: _ClassVar[int]
    CANARY_ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    PSI_FIELD_NUMBER: _ClassVar[int]
    P_CTR_RATIO_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    at_ms: int
    weight: float
    action: str
    live_requests: int
    canary_requests: int
    live_p99_ms: float
    canary_p99_ms: float
    canary_error_rate: float
    psi: float
    p_ctr_ratio: float
    checks: _containers.RepeatedCompositeFieldContainer[CheckInfo]
    def __init__(self, at_ms: _Optional[int] = ..., weight: _Optional[float] = ..., action: _Optional[str] = ..., live_requests: _Optional[int] = ..., canary_requests: _Optional[int] = ..., live_p99_ms: _Optional[float] = ..., canary_p99_ms: _Optional[float] = ..., canary_error_rate: _Optional[float] = ..., psi: _Optional[float] = ..., p_ctr_ratio: _Optional[float] = ..., checks: _Optional[_Iterable[_Union[CheckInfo, _Mapping]]] = ...) -> None: ...

class ShadowInfo(_message.Message):
    __slots__ = ("pairs", "dropped", "rank_correlation", "top_k_overlap", "mean_abs_delta_p_ctr")
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    RANK_CORRELATION_FIELD_NUMBER: _ClassVar[int]
    TOP_K_OVERLAP_FIELD_NUMBER: _ClassVar[int]
    MEAN_ABS_DELTA_P_CTR_FIELD_NUMBER: _ClassVar[int]
    pairs: int
    dropped: int
    rank_correlation: float
    top_k_overlap: float
    mean_abs_delta_p_ctr: float
    def __init__(self, pairs: _Optional[int] = ..., dropped: _Optional[int] = ..., rank_correlation: _Optional[float] = ..., top_k_overlap: _Optional[float] = ..., mean_abs_delta_p_ctr: _Optional[float] = ...) -> None: ...

class RolloutStatus(_message.Message):
    __slots__ = ("model", "live_version", "canary_version", "canary_weight", "shadow_version", "shadow_sample_rate", "phase", "failed_windows", "threshold", "interval_s", "steps", "versions", "windows", "shadow", "message")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LIVE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    CANARY_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    SHADOW_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHADOW_SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    FAILED_WINDOWS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    WINDOWS_FIELD_NUMBER: _ClassVar[int]
    SHADOW_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    model: str
    live_version: int
    canary_version: int
    canary_weight: float
    shadow_version: int
    shadow_sample_rate: float
    phase: str
    failed_windows: int
    threshold: int
    interval_s: float
    steps: _containers.RepeatedScalarFieldContainer[float]
    versions: _containers.RepeatedCompositeFieldContainer[VersionInfo]
    windows: _containers.RepeatedCompositeFieldContainer[WindowInfo]
    shadow: ShadowInfo
    message: str
    def __init__(self, model: _Optional[str] = ..., live_version: _Optional[int] = ..., canary_version: _Optional[int] = ..., canary_weight: _Optional[float] = ..., shadow_version: _Optional[int] = ..., shadow_sample_rate: _Optional[float] = ..., phase: _Optional[str] = ..., failed_windows: _Optional[int] = ..., threshold: _Optional[int] = ..., interval_s: _Optional[float] = ..., steps: _Optional[_Iterable[float]] = ..., versions: _Optional[_Iterable[_Union[VersionInfo, _Mapping]]] = ..., windows: _Optional[_Iterable[_Union[WindowInfo, _Mapping]]] = ..., shadow: _Optional[_Union[ShadowInfo, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class AuditInfo(_message.Message):
    __slots__ = ("seq", "version", "from_state", "to_state", "actor", "at_ms", "reason", "metrics_json", "weight", "has_weight")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FROM_STATE_FIELD_NUMBER: _ClassVar[int]
    TO_STATE_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    AT_MS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    HAS_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    seq: int
    version: int
    from_state: str
    to_state: str
    actor: str
    at_ms: int
    reason: str
    metrics_json: str
    weight: float
    has_weight: bool
    def __init__(self, seq: _Optional[int] = ..., version: _Optional[int] = ..., from_state: _Optional[str] = ..., to_state: _Optional[str] = ..., actor: _Optional[str] = ..., at_ms: _Optional[int] = ..., reason: _Optional[str] = ..., metrics_json: _Optional[str] = ..., weight: _Optional[float] = ..., has_weight: _Optional[bool] = ...) -> None: ...

class HistoryResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditInfo]
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditInfo, _Mapping]]] = ...) -> None: ...
