from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Flag(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FLAG_UNSPECIFIED: _ClassVar[Flag]
    FLAG_USER_HISTORY_MISSING: _ClassVar[Flag]
    FLAG_REQUEST_TIME_DEFAULTED: _ClassVar[Flag]
    FLAG_HISTORY_CACHE_UNAVAILABLE: _ClassVar[Flag]

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_INT32: _ClassVar[DType]
    DTYPE_INT64: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT64: _ClassVar[DType]
FLAG_UNSPECIFIED: Flag
FLAG_USER_HISTORY_MISSING: Flag
FLAG_REQUEST_TIME_DEFAULTED: Flag
FLAG_HISTORY_CACHE_UNAVAILABLE: Flag
DTYPE_UNSPECIFIED: DType
DTYPE_INT32: DType
DTYPE_INT64: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT64: DType

class Context(_message.Message):
    __slots__ = ("placement", "device", "hour_of_day")
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    HOUR_OF_DAY_FIELD_NUMBER: _ClassVar[int]
    placement: str
    device: str
    hour_of_day: int
    def __init__(self, placement: _Optional[str] = ..., device: _Optional[str] = ..., hour_of_day: _Optional[int] = ...) -> None: ...

class UserFeatures(_message.Message):
    __slots__ = ("segment", "recent_categories")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    RECENT_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    segment: int
    recent_categories: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, segment: _Optional[int] = ..., recent_categories: _Optional[_Iterable[int]] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("ad_id", "advertiser_id", "campaign_id", "category", "bid", "dense_features")
    AD_ID_FIELD_NUMBER: _ClassVar[int]
    ADVERTISER_ID_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    BID_FIELD_NUMBER: _ClassVar[int]
    DENSE_FEATURES_FIELD_NUMBER: _ClassVar[int]
    ad_id: int
    advertiser_id: int
    campaign_id: int
    category: int
    bid: float
    dense_features: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, ad_id: _Optional[int] = ..., advertiser_id: _Optional[int] = ..., campaign_id: _Optional[int] = ..., category: _Optional[int] = ..., bid: _Optional[float] = ..., dense_features: _Optional[_Iterable[float]] = ...) -> None: ...

class ModelSpec(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("request_id", "user_id", "request_time_ms", "context", "user", "candidates", "model", "top_k")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    user_id: int
    request_time_ms: int
    context: Context
    user: UserFeatures
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    model: ModelSpec
    top_k: int
    def __init__(self, request_id: _Optional[str] = ..., user_id: _Optional[int] = ..., request_time_ms: _Optional[int] = ..., context: _Optional[_Union[Context, _Mapping]] = ..., user: _Optional[_Union[UserFeatures, _Mapping]] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., model: _Optional[_Union[ModelSpec, _Mapping]] = ..., top_k: _Optional[int] = ...) -> None: ...

class ScoredCandidate(_message.Message):
    __slots__ = ("ad_id", "request_index", "p_ctr", "p_cvr", "expected_value", "rank")
    AD_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_INDEX_FIELD_NUMBER: _ClassVar[int]
    P_CTR_FIELD_NUMBER: _ClassVar[int]
    P_CVR_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VALUE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    ad_id: int
    request_index: int
    p_ctr: float
    p_cvr: float
    expected_value: float
    rank: int
    def __init__(self, ad_id: _Optional[int] = ..., request_index: _Optional[int] = ..., p_ctr: _Optional[float] = ..., p_cvr: _Optional[float] = ..., expected_value: _Optional[float] = ..., rank: _Optional[int] = ...) -> None: ...

class ServedBy(_message.Message):
    __slots__ = ("model_name", "model_version", "fm_version", "backend", "arm")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FM_VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    ARM_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: int
    fm_version: str
    backend: str
    arm: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[int] = ..., fm_version: _Optional[str] = ..., backend: _Optional[str] = ..., arm: _Optional[str] = ...) -> None: ...

class Timing(_message.Message):
    __slots__ = ("total_us", "features_us", "cache_us", "inference_us")
    TOTAL_US_FIELD_NUMBER: _ClassVar[int]
    FEATURES_US_FIELD_NUMBER: _ClassVar[int]
    CACHE_US_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_US_FIELD_NUMBER: _ClassVar[int]
    total_us: int
    features_us: int
    cache_us: int
    inference_us: int
    def __init__(self, total_us: _Optional[int] = ..., features_us: _Optional[int] = ..., cache_us: _Optional[int] = ..., inference_us: _Optional[int] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("request_id", "candidates", "served_by", "flags", "timing", "request_time_ms")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    candidates: _containers.RepeatedCompositeFieldContainer[ScoredCandidate]
    served_by: ServedBy
    flags: _containers.RepeatedScalarFieldContainer[Flag]
    timing: Timing
    request_time_ms: int
    def __init__(self, request_id: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[ScoredCandidate, _Mapping]]] = ..., served_by: _Optional[_Union[ServedBy, _Mapping]] = ..., flags: _Optional[_Iterable[_Union[Flag, str]]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., request_time_ms: _Optional[int] = ...) -> None: ...

class Column(_message.Message):
    __slots__ = ("dtype", "length", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: DType
    length: int
    data: bytes
    def __init__(self, dtype: _Optional[_Union[DType, str]] = ..., length: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class CandidateColumns(_message.Message):
    __slots__ = ("ad_id", "advertiser_id", "campaign_id", "category", "bid", "dense_features", "dense_width")
    AD_ID_FIELD_NUMBER: _ClassVar[int]
    ADVERTISER_ID_FIELD_NUMBER: _ClassVar[int]
    CAMPAIGN_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    BID_FIELD_NUMBER: _ClassVar[int]
    DENSE_FEATURES_FIELD_NUMBER: _ClassVar[int]
    DENSE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    ad_id: Column
    advertiser_id: Column
    campaign_id: Column
    category: Column
    bid: Column
    dense_features: Column
    dense_width: int
    def __init__(self, ad_id: _Optional[_Union[Column, _Mapping]] = ..., advertiser_id: _Optional[_Union[Column, _Mapping]] = ..., campaign_id: _Optional[_Union[Column, _Mapping]] = ..., category: _Optional[_Union[Column, _Mapping]] = ..., bid: _Optional[_Union[Column, _Mapping]] = ..., dense_features: _Optional[_Union[Column, _Mapping]] = ..., dense_width: _Optional[int] = ...) -> None: ...

class ScoreColumnsRequest(_message.Message):
    __slots__ = ("request_id", "user_id", "request_time_ms", "context", "user", "candidates", "model", "top_k")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    user_id: int
    request_time_ms: int
    context: Context
    user: UserFeatures
    candidates: CandidateColumns
    model: ModelSpec
    top_k: int
    def __init__(self, request_id: _Optional[str] = ..., user_id: _Optional[int] = ..., request_time_ms: _Optional[int] = ..., context: _Optional[_Union[Context, _Mapping]] = ..., user: _Optional[_Union[UserFeatures, _Mapping]] = ..., candidates: _Optional[_Union[CandidateColumns, _Mapping]] = ..., model: _Optional[_Union[ModelSpec, _Mapping]] = ..., top_k: _Optional[int] = ...) -> None: ...

class RankedColumns(_message.Message):
    __slots__ = ("ad_id", "request_index", "p_ctr", "p_cvr", "expected_value")
    AD_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_INDEX_FIELD_NUMBER: _ClassVar[int]
    P_CTR_FIELD_NUMBER: _ClassVar[int]
    P_CVR_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VALUE_FIELD_NUMBER: _ClassVar[int]
    ad_id: Column
    request_index: Column
    p_ctr: Column
    p_cvr: Column
    expected_value: Column
    def __init__(self, ad_id: _Optional[_Union[Column, _Mapping]] = ..., request_index: _Optional[_Union[Column, _Mapping]] = ..., p_ctr: _Optional[_Union[Column, _Mapping]] = ..., p_cvr: _Optional[_Union[Column, _Mapping]] = ..., expected_value: _Optional[_Union[Column, _Mapping]] = ...) -> None: ...

class ScoreColumnsResponse(_message.Message):
    __slots__ = ("request_id", "candidates", "served_by", "flags", "timing", "request_time_ms")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    SERVED_BY_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    TIMING_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    candidates: RankedColumns
    served_by: ServedBy
    flags: _containers.RepeatedScalarFieldContainer[Flag]
    timing: Timing
    request_time_ms: int
    def __init__(self, request_id: _Optional[str] = ..., candidates: _Optional[_Union[RankedColumns, _Mapping]] = ..., served_by: _Optional[_Union[ServedBy, _Mapping]] = ..., flags: _Optional[_Iterable[_Union[Flag, str]]] = ..., timing: _Optional[_Union[Timing, _Mapping]] = ..., request_time_ms: _Optional[int] = ...) -> None: ...
