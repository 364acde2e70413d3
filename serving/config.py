"""Server configuration: one frozen dataclass, validated when it is built, from flags, environment or code.

Every field documents itself (`field_doc`), says its limits in its metadata, and is read from the
environment variable `ADRANK_<FIELD>` with its own type. A bad value fails at construction with a
`ConfigError` naming the field (and the variable or flag it came from) and the limit, rather than deep
inside a backend when the first request arrives. Precedence, as `adrank serve` applies it: flags over
environment over these defaults.

Usage::

    config = ServerConfig(port=0, model_repository="runs/demo/model_repository")
    config = ServerConfig.from_env(port=50052)       # ADRANK_* variables, then these overrides
    ServerConfig(backend="onnx")                     # ConfigError: backend: must be one of embedded, triton …
"""

from __future__ import annotations

import ipaddress
import os
import types
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Union, get_args, get_origin, get_type_hints

from embedding_cache.redis_client import URL_SCHEMES as REDIS_URL_SCHEMES

ENV_PREFIX = "ADRANK_"
BACKENDS: tuple[str, ...] = ("embedded", "triton")
CACHE_BACKENDS: tuple[str, ...] = ("embedded", "redis", "none")
CACHE_FALLBACKS: tuple[str, ...] = ("prior", "fail")
TRITON_FALLBACKS: tuple[str, ...] = ("fallback", "fail")
LOG_FORMATS: tuple[str, ...] = ("text", "json")
REDIS_SCHEMES: tuple[str, ...] = REDIS_URL_SCHEMES  # one list of accepted URL schemes, the cache's own
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class ConfigError(ValueError):
    """A configuration value outside what its field allows; `field` names it, the message the limit."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field, self.reason = field_name, message


def _field(default: Any, doc: str, *, between: tuple[float, float] | None = None,
           choices: tuple[str, ...] | None = None, non_empty: bool = False) -> Any:
    """A dataclass field that carries its documentation and its limits (checked in __post_init__)."""
    return field(default=default, metadata={"doc": doc, "between": between, "choices": choices,
                                            "non_empty": non_empty})


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Everything `adrank serve` can be told; see each field's doc (`field_doc`) for what it does."""

    host: str = _field("127.0.0.1", "Address the gRPC server (and the metrics endpoint) binds; 0.0.0.0 for every "
                       "interface.", non_empty=True)
    port: int = _field(50051, "TCP port of the gRPC server; 0 picks a free one (written to --ready-file).",
                       between=(0, 65535))
    model_repository: str = _field("runs/demo/model_repository", "Directory of <model>/<version>/ folders the "
                                   "backend loads (Triton reads the same layout).", non_empty=True)
    default_model: str = _field("vm", "Model name used when a request leaves model.name empty.", non_empty=True)
    backend: str = _field("embedded", "Where inference runs: 'embedded' (onnxruntime in this process) or 'triton' "
                          "(a Triton server at triton_url).", choices=BACKENDS)
    triton_url: str = _field("127.0.0.1:8001", "HOST:PORT of Triton's gRPC endpoint (no scheme); read only when "
                             "backend is 'triton'.", non_empty=True)
    triton_fallback: str = _field("fallback", "When Triton is down or slow (backend 'triton'): 'fallback' serves the "
                                  "same model version with the embedded backend behind a circuit breaker "
                                  "(served_by.backend 'embedded', health SERVING); 'fail' answers UNAVAILABLE "
                                  "and health turns NOT_SERVING.", choices=TRITON_FALLBACKS)
    triton_breaker_failures: int = _field(3, "Consecutive Triton failures that open its circuit breaker (calls then "
                                          "go to the embedded backend until a probe succeeds).", between=(1, 10_000))
    triton_breaker_cooldown_s: float = _field(1.0, "Seconds an open Triton breaker waits before one probe call "
                                              "(half-open); success closes it.", between=(0.01, 600))
    cache_backend: str = _field("none", "Where LoopFM models read FM history: 'embedded' (a snapshot directory), "
                                "'redis', or 'none' (LoopFM models are refused at load).", choices=CACHE_BACKENDS)
    cache_location: str = _field("", "The embedding cache: a directory (embedded) or a redis://HOST:PORT/DB URL "
                                 "(redis); required unless cache_backend is 'none'.")
    cache_refresh_s: float = _field(5.0, "Seconds between checks for a newly published cache snapshot (a "
                                    "reference swap; the current one keeps serving meanwhile).", between=(0.1, 3600))
    max_candidates: int = _field(1000, "Most candidates one Score request may carry; more is INVALID_ARGUMENT. "
                                 "Bounds the latency of a single call.", between=(1, 100_000))
    max_dense_features: int = _field(64, "Most dense_features one candidate may carry (the model's own dense width "
                                     "applies too).", between=(0, 4096))
    max_recent_categories: int = _field(64, "Most user.recent_categories a request may carry.", between=(0, 4096))
    max_request_id_len: int = _field(128, "Longest request_id accepted, in characters.", between=(0, 4096))
    max_message_bytes: int = _field(4 * 1024 * 1024, "Largest gRPC message received or sent, in bytes.",
                                    between=(1024, 2**31 - 1))
    max_future_skew_ms: int = _field(5 * 60 * 1000, "Requests timed further than this in the future are refused "
                                     "(clock-skew tolerance); ms.", between=(0, 24 * 3600 * 1000))
    intra_op_threads: int = _field(1, "onnxruntime threads per inference (embedded backend); 0 lets onnxruntime "
                                   "use every core. Keep 1 when concurrent calls already fill the cores.",
                                   between=(0, 256))
    workers: int = _field(0, "Serving processes on the one port (SO_REUSEPORT), each with its own event loop and "
                          "onnxruntime session; metrics on metrics_port add them up. 0: one per core.",
                          between=(0, 256))
    busy_poll_us: int = _field(0, "After each wake-up the event loop polls without waiting for up to this long "
                               "before it blocks (serving/busy_poll.py): lower latency at low load for a core kept "
                               "busy; 0: off. Give each worker a core of its own when it is on; µs.",
                               between=(0, 100_000))
    max_concurrent_rpcs: int = _field(256, "Calls served at the same time; beyond it gRPC answers "
                                      "RESOURCE_EXHAUSTED immediately instead of queueing without bound.",
                                      between=(1, 1_000_000))
    metrics_port: int | None = _field(None, "Port of the Prometheus /metrics endpoint (on host); unset: no endpoint.",
                                      between=(1, 65535))
    max_in_flight: int = _field(64, "Score calls run at the same time (admission control at the pipeline seam; "
                                "health and reflection are not counted). 0 turns admission control off.",
                                between=(0, 100_000))
    max_queued: int = _field(0, "Score calls that may wait for a slot when max_in_flight are running; one more is "
                             "answered RESOURCE_EXHAUSTED at once. 0 (the default): every excess call is refused "
                             "at once, so a refusal costs the caller under a few ms and it can retry elsewhere; a "
                             "queue absorbs bursts, but each call refused from it has waited max_queue_wait_ms.",
                             between=(0, 100_000))
    max_queue_wait_ms: int = _field(20, "Longest a queued Score call waits for a slot before RESOURCE_EXHAUSTED "
                                    "(never past the call's own deadline); ms.", between=(0, 60_000))
    retry_after_ms: int = _field(100, "Back-off suggested to refused callers, in the trailing metadata "
                                 "`retry-after-ms` and `grpc-retry-pushback-ms`; ms.", between=(0, 600_000))
    max_deadline_ms: int = _field(1000, "Cap on a call's deadline, and the deadline of a call that sets none: work "
                                  "stops at the next stage boundary once it has passed (DEADLINE_EXCEEDED); ms.",
                                  between=(1, 600_000))
    cache_timeout_ms: int = _field(50, "Longest one embedding-cache lookup may take (less when the call's deadline "
                                   "is nearer); a slower lookup counts as a cache failure; ms.", between=(1, 60_000))
    cache_fallback: str = _field("prior", "When the embedding cache fails or its breaker is open: 'prior' scores "
                                 "LoopFM requests with the population prior, flagged FLAG_HISTORY_CACHE_UNAVAILABLE; "
                                 "'fail' answers UNAVAILABLE (and health turns NOT_SERVING while it is down).",
                                 choices=CACHE_FALLBACKS)
    cache_breaker_failures: int = _field(5, "Consecutive cache failures that open the cache's circuit breaker "
                                         "(lookups are then skipped until a probe succeeds).", between=(1, 10_000))
    cache_breaker_cooldown_s: float = _field(1.0, "Seconds an open cache breaker waits before letting one probe "
                                             "lookup through (half-open); success closes it.", between=(0.01, 600))
    readiness_interval_s: float = _field(1.0, "Seconds between readiness checks (a model version ready, hard "
                                         "dependencies up or covered by a fallback) that set health.",
                                         between=(0.05, 600))
    drain_delay_s: float = _field(5.0, "On SIGTERM, seconds the server keeps serving after health turns "
                                  "NOT_SERVING, so balancers watching health stop routing first (deploy/README.md).",
                                  between=(0, 600))
    drain_timeout_s: float = _field(15.0, "After the drain delay, seconds calls in flight get to finish once the "
                                    "server stops accepting; keep grace >= preStop + delay + timeout + 5 s.",
                                    between=(0, 600))
    reflection: bool = _field(True, "Serve gRPC reflection, so grpcurl and similar tools can list the API.")
    max_bid: float = _field(1e6, "Largest candidate bid accepted; more is INVALID_ARGUMENT. Bounds expected_value "
                            "so no score overflows.", between=(0.0, 1e12))
    max_abs_dense_feature: float = _field(1e6, "Largest |value| accepted in candidates.dense_features; more is "
                                          "INVALID_ARGUMENT. Keeps the model's activations finite (float32).",
                                          between=(0.0, 1e9))
    request_log: str = _field("", "Folder the request log is written to: one Parquet row per scored request "
                              "(docs/request-log.md), by a bounded writer that never delays a response. "
                              "Unset: no request log.")
    request_log_sample: float = _field(1.0, "Share of requests the request log keeps, chosen by a hash of the "
                                       "request id (every replica and a later replay agree on which).",
                                       between=(0.0, 1.0))
    request_log_queue: int = _field(4096, "Records the request log holds for its writer; when full, records are "
                                    "dropped and counted (adrank_requestlog_records_dropped_total, reason "
                                    "queue_full) rather than delaying a response.", between=(1, 10_000_000))
    request_log_rotate_s: float = _field(300.0, "Seconds after which the request log publishes its open file even "
                                         "when it is not full, so readers see quiet traffic within about this long.",
                                         between=(0.01, 86_400))
    request_log_writer: str = _field("thread", "Where the request log's Arrow/Parquet work runs: 'thread' (a thread "
                                     "of the server; measured best on a 2-core host) or 'process' (a writer process "
                                     "of its own: short interpreter-lock holds, for hosts with spare cores); "
                                     "docs/request-log.md.", choices=("process", "thread"))
    transfer_sample: float = _field(0.01, "Share of LoopFM requests (within the request log's sample) also scored "
                                    "with FM history masked out, after the response is sent, and logged beside the "
                                    "served scores: the live transfer ratio once labels join (docs/request-log.md).",
                                    between=(0.0, 1.0))
    tls_cert: str = _field("", "PEM certificate chain of the ranking port; with tls_key the port speaks TLS only. "
                           "Read once at start (rotate by restarting).")
    tls_key: str = _field("", "PEM private key of tls_cert (keep it readable by the server's user only).")
    tls_client_ca: str = _field("", "PEM CA bundle: when set, every client must present a certificate signed by "
                                "it (mutual TLS); needs tls_cert and tls_key.")
    insecure: bool = _field(False, "Allow plaintext on a host that is not loopback. Without it, a non-loopback "
                            "host needs tls_cert and tls_key; loopback is plaintext by default.")
    auth_tokens: str = _field("", "Token file: one `<sha256-hex of token> <scope,scope> <name>` line per token "
                              "(docs/security.md). When set, AdRanking needs a token with scope 'score', "
                              "administration 'admin'; health and reflection need none. Unset: no token check.")
    log_format: str = _field("text", "Server log lines: 'text' (human) or 'json' (one JSON object per line with "
                             "fields, for log shippers; serving/jsonlog.py).", choices=LOG_FORMATS)
    access_log_sample: float = _field(0.01, "Share of OK Score calls written to the access log (logger "
                                      "adrank.access: request_id, model, version, code, latency_ms); failures are "
                                      "always written, rate-limited.", between=(0.0, 1.0))
    access_log_failures_per_s: int = _field(10, "Most access-log lines per failure status code per second; the "
                                            "next line says how many were left out (a flood of bad input cannot "
                                            "flood the log).", between=(0, 100_000))
    rollout_registry: str = _field("", "Rollout registry (docs/rollouts.md): a state folder (SQLite file inside) or a "
                                   "redis://HOST:PORT/DB URL shared by every replica. When set, unpinned requests "
                                   "follow its routing table (live, sticky canary, shadow), versions it stages are "
                                   "hot-loaded, and the RolloutAdmin service answers (it needs auth_tokens). Unset: "
                                   "the newest ready version serves.")
    rollout_poll_s: float = _field(1.0, "Seconds between reads of the rollout registry's change counter: how long "
                                   "this replica may lag a routing change.", between=(0.05, 60))
    rollout_unload_grace_s: float = _field(5.0, "Seconds a retired version stays loaded after the last route left it "
                                           "(calls that resolved it just before finish on it).", between=(0, 3600))
    rollout_lease_s: float = _field(10.0, "Seconds a replica's lease on a rollout's analysis lasts unrenewed: when "
                                    "the replica leading it dies, another takes the analysis over within about "
                                    "this (docs/rollouts.md).", between=(0.5, 600))

    def __post_init__(self) -> None:
        hints = get_type_hints(type(self))
        for f in fields(self):
            _check(f.name, getattr(self, f.name), hints[f.name], f.metadata)
        if self.cache_backend != "none" and not self.cache_location:
            raise ConfigError("cache_location", f"required when cache_backend is {self.cache_backend!r}")
        if self.cache_backend == "redis" and not self.cache_location.startswith(REDIS_SCHEMES):
            raise ConfigError("cache_location", f"a redis cache needs a URL starting with {' or '.join(REDIS_SCHEMES)}"
                                                f", got {self.cache_location!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_key" if self.tls_cert else "tls_cert",
                              "--tls-cert and --tls-key go together (a certificate and its private key)")
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError("tls_client_ca", "mutual TLS needs --tls-cert and --tls-key as well")
        if not self.tls_cert and not self.insecure and not is_loopback(self.host):
            raise ConfigError("host", f"{self.host} is not a loopback address and the port has no TLS: pass "
                                      "--tls-cert and --tls-key (ADRANK_TLS_CERT, ADRANK_TLS_KEY), or --insecure "
                                      "(ADRANK_INSECURE=1) to serve plaintext there deliberately")
        host, _, port = self.triton_url.rpartition(":")
        if "://" in self.triton_url or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigError("triton_url", f"expected HOST:PORT with a port in 1..65535 and no scheme, "
                                            f"got {self.triton_url!r}")

    @classmethod
    def env_var(cls, name: str, prefix: str = ENV_PREFIX) -> str:
        """The environment variable of field `name`: ADRANK_<NAME>."""
        return prefix + name.upper()

    @classmethod
    def from_env(cls, prefix: str = ENV_PREFIX, environ: Mapping[str, str] | None = None,
                 **overrides: object) -> ServerConfig:
        """Every field from its `ADRANK_<FIELD>` variable (parsed as the field's type), then `overrides`
        (None means "not given", so unset flags leave the environment's value). Errors name the variable."""
        environ = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, object] = {}
        sourced: dict[str, str] = {}  # field -> the variable it was read from
        for f in fields(cls):
            var = cls.env_var(f.name, prefix)
            if var in environ:
                values[f.name] = parse_env_value(var, environ[var], hints[f.name])
                sourced[f.name] = var
        given = {k: v for k, v in overrides.items() if v is not None}
        values.update(given)
        try:
            return cls(**values)  # type: ignore[arg-type]
        except ConfigError as exc:
            if exc.field in sourced and exc.field not in given:
                var = sourced[exc.field]
                raise ConfigError(var, exc.reason) from None
            raise


def usable_cores(cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota when one is set
    (a container limited to 2 CPUs on a 64-core node gets 2, not 64)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = open(cpu_max).read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, -(-int(quota) // int(period))))
    except (OSError, ValueError):  # no cgroup v2 file, or not in the expected form: affinity alone
        pass
    return cores


def resolved_workers(config: ServerConfig) -> int:
    """How many serving processes `config` asks for: `workers`, or one per usable core (`usable_cores`)."""
    return config.workers or usable_cores()


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1), the only hosts plaintext is the default on."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # a host name other than localhost may resolve anywhere
        return False


def field_doc(name: str) -> str:
    """What field `name` does, for CLI help and the README."""
    return next(f.metadata["doc"] for f in fields(ServerConfig) if f.name == name)


def field_default(name: str) -> object:
    f = next(f for f in fields(ServerConfig) if f.name == name)
    return None if f.default is MISSING else f.default


def flag_help(name: str) -> str:
    """`field_doc` plus where else the value can come from, for an `adrank serve` flag."""
    return f"{field_doc(name)} [env {ServerConfig.env_var(name)}; default {field_default(name)!r}]".replace("%", "%%")


def _optional_inner(tp: Any) -> Any | None:
    """X for `X | None`, else None."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0]
    return None


def parse_env_value(var: str, raw: str, tp: Any) -> object:
    """`raw` as type `tp` (str, int, float, bool or one of them | None); ConfigError naming `var` if it is not."""
    inner = _optional_inner(tp)
    if inner is not None:
        return None if raw.strip().lower() in ("", "none") else parse_env_value(var, raw, inner)
    text = raw.strip()
    if tp is str:
        return raw
    if tp is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigError(var, f"expected a boolean ({'/'.join(_TRUE)} or {'/'.join(_FALSE)}), got {raw!r}")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(var, f"expected an integer, got {raw!r}") from None
    if tp is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(var, f"expected a number, got {raw!r}") from None
    raise TypeError(f"{var}: no environment parser for type {tp!r}")


def _check(name: str, value: object, tp: Any, meta: Mapping[str, Any]) -> None:
    inner = _optional_inner(tp)
    if inner is not None:
        if value is None:
            return
        tp = inner
    # bool is an int to Python; a True port is a mistake, an int timeout is fine
    ok = (isinstance(value, tp) and not (tp is not bool and isinstance(value, bool))) or (
        tp is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        raise ConfigError(name, f"expected {getattr(tp, '__name__', tp)}, got {type(value).__name__} {value!r}")
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(name, f"must be one of {', '.join(meta['choices'])}; got {value!r}")
    if meta.get("non_empty") and not value:
        raise ConfigError(name, "must not be empty")
    between = meta.get("between")
    if between is not None:
        low, high = between
        if value != value or not low <= value <= high:  # value != value: NaN
            raise ConfigError(name, f"must be within {low}..{high}, got {value!r}")
