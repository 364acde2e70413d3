"""serving.config: validation at construction, typed environment variables, and a flag for every tunable field."""

from __future__ import annotations

import argparse
import math
from dataclasses import FrozenInstanceError, fields, replace

import pytest

from adrank.cli import build_parser, main
from serving.config import ConfigError, ServerConfig, field_doc, parse_env_value

# Fields without an `adrank serve` flag, and why: the request-schema limits decide which requests are
# valid, so they belong to the API, not to one deployment — a flag per replica would let the same request
# pass on one replica and fail on the next. They are still read from the environment (tests, experiments).
NOT_OPERATOR_TUNABLE: dict[str, str] = {
    "max_dense_features": "request-schema limit (API contract), environment only",
    "max_recent_categories": "request-schema limit (API contract), environment only",
    "max_request_id_len": "request-schema limit (API contract), environment only",
    "max_bid": "request-schema limit (API contract), environment only",
    "max_abs_dense_feature": "request-schema limit (API contract), environment only",
}
# Fields set together by one flag that names both which store and where it is.
SET_BY: dict[str, tuple[str, ...]] = {"cache_backend": ("--cache-dir", "--cache-url"),
                                      "cache_location": ("--cache-dir", "--cache-url")}
RANGED = [f.name for f in fields(ServerConfig) if f.metadata.get("between")]


def _serve_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["serve"]


def test_defaults_are_valid_and_the_config_is_frozen() -> None:
    config = ServerConfig()
    with pytest.raises(FrozenInstanceError):
        config.port = 1  # type: ignore[misc]


def test_every_field_documents_itself() -> None:
    for f in fields(ServerConfig):
        assert len(field_doc(f.name)) > 20, f"{f.name} has no docstring"


@pytest.mark.parametrize("name,value", [("backend", "onnx"), ("backend", "Triton"), ("cache_backend", "memcached")])
def test_unknown_enum_values_are_refused_naming_the_choices(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{name}: must be one of .*; got '{value}'") as exc:
        ServerConfig(**{name: value})
    assert exc.value.field == name


@pytest.mark.parametrize("name", RANGED)
def test_values_just_outside_each_range_are_refused_naming_the_limit(name: str) -> None:
    f = next(f for f in fields(ServerConfig) if f.name == name)
    low, high = f.metadata["between"]
    is_int = isinstance(f.default, int) or f.default is None
    step = 1 if is_int else 0.01
    for bad in (low - step, high + step):
        with pytest.raises(ConfigError, match=rf"^{name}: must be within {low}\.\.{high}, got"):
            ServerConfig(**{name: bad})
    ServerConfig(**{name: low})
    ServerConfig(**{name: high})


@pytest.mark.parametrize("kwargs,match", [
    (dict(port=True), "port: expected int, got bool"),
    (dict(port="50051"), "port: expected int, got str"),
    (dict(drain_timeout_s=math.nan), "drain_timeout_s: must be within"),
    (dict(reflection=1), "reflection: expected bool"),
    (dict(host=""), "host: must not be empty"),
    (dict(cache_backend="embedded"), "cache_location: required when cache_backend is 'embedded'"),
    (dict(cache_backend="redis", cache_location="localhost:6379"), "cache_location: a redis cache needs a URL"),
    (dict(triton_url="grpc://triton:8001"), "triton_url: expected HOST:PORT"),
    (dict(triton_url="triton"), "triton_url: expected HOST:PORT"),
])
def test_bad_types_and_combinations_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ServerConfig(**kwargs)


def test_replace_validates_too() -> None:
    with pytest.raises(ConfigError, match="max_candidates"):
        replace(ServerConfig(), max_candidates=0)
    assert ServerConfig(drain_timeout_s=2).drain_timeout_s == 2  # an int where a float is expected is fine


@pytest.mark.parametrize("var,raw,expected", [
    ("ADRANK_PORT", " 50052 ", 50052),                            # int
    ("ADRANK_DRAIN_TIMEOUT_S", "2.5", 2.5),                         # float
    ("ADRANK_REFLECTION", "off", False),                          # bool
    ("ADRANK_REFLECTION", "TRUE", True),
    ("ADRANK_HOST", "::1", "::1"),                                # str
    ("ADRANK_METRICS_PORT", "9100", 9100),                        # optional int
    ("ADRANK_METRICS_PORT", "", None),
    ("ADRANK_METRICS_PORT", "none", None),
])
def test_environment_values_take_their_field_type(var: str, raw: str, expected: object) -> None:
    config = ServerConfig.from_env(environ={var: raw})
    assert getattr(config, var.removeprefix("ADRANK_").lower()) == expected


def test_every_field_is_read_from_its_environment_variable() -> None:
    samples = {int: "7", float: "7.5", bool: "no", str: "x"}
    custom = {"backend": "triton", "cache_backend": "redis", "cache_location": "redis://h:1/0",
              "triton_url": "triton:8001", "port": "7", "metrics_port": "9100", "max_message_bytes": "2048",
              "insecure": "yes", "request_log_sample": "0.25", "cache_fallback": "fail",
              "triton_fallback": "fail", "log_format": "json", "access_log_sample": "0.5"}
    environ = {}
    custom["transfer_sample"] = "0.25"  # a share: the float sample 7.5 is out of its range
    custom["request_log_writer"] = "process"
    for f in fields(ServerConfig):
        kind = type(f.default) if f.default is not None else int
        environ[ServerConfig.env_var(f.name)] = custom.get(f.name, samples[kind])
    config = ServerConfig.from_env(environ=environ)
    for f in fields(ServerConfig):
        value = getattr(config, f.name)
        assert value != f.default, f"{f.name} ignored {ServerConfig.env_var(f.name)}"


@pytest.mark.parametrize("var,raw,match", [
    ("ADRANK_PORT", "fifty", "ADRANK_PORT: expected an integer, got 'fifty'"),
    ("ADRANK_CACHE_REFRESH_S", "5s", "ADRANK_CACHE_REFRESH_S: expected a number, got '5s'"),
    ("ADRANK_REFLECTION", "maybe", "ADRANK_REFLECTION: expected a boolean"),
    ("ADRANK_METRICS_PORT", "x", "ADRANK_METRICS_PORT: expected an integer"),
    ("ADRANK_PORT", "70000", "ADRANK_PORT: must be within 0..65535, got 70000"),
    ("ADRANK_BACKEND", "onnx", "ADRANK_BACKEND: must be one of embedded, triton"),
])
def test_bad_environment_values_name_the_variable(var: str, raw: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ServerConfig.from_env(environ={var: raw})


def test_overrides_beat_environment_and_none_means_not_given() -> None:
    environ = {"ADRANK_PORT": "7000", "ADRANK_MAX_CANDIDATES": "50"}
    config = ServerConfig.from_env(environ=environ, port=8000, max_candidates=None)
    assert (config.port, config.max_candidates, config.max_concurrent_rpcs) == (8000, 50, 256)
    with pytest.raises(ConfigError, match="^port: must be within"):  # a bad override names the field, not the env
        ServerConfig.from_env(environ=environ, port=-1)


def test_parse_env_value_rejects_unsupported_types() -> None:
    with pytest.raises(TypeError):
        parse_env_value("ADRANK_X", "1", list)


def test_every_tunable_field_has_a_serve_flag() -> None:
    parser = _serve_parser()
    dests = {a.dest for a in parser._actions}
    options = {o for a in parser._actions for o in a.option_strings}
    missing = [f.name for f in fields(ServerConfig)
               if f.name not in dests and f.name not in NOT_OPERATOR_TUNABLE and f.name not in SET_BY]
    assert not missing, f"ServerConfig fields without an `adrank serve` flag: {missing}"
    assert all(set(flags) <= options for flags in SET_BY.values())
    assert not set(NOT_OPERATOR_TUNABLE) & dests, "a field with a flag is listed as not tunable"
    assert set(NOT_OPERATOR_TUNABLE) | set(SET_BY) <= {f.name for f in fields(ServerConfig)}


def test_flags_leave_unset_values_to_the_environment() -> None:
    parser = _serve_parser()
    args = parser.parse_args([])
    assert all(getattr(args, f.name, None) is None for f in fields(ServerConfig)), "a flag default hides env"
    assert "--max-concurrent-rpcs" in parser.format_help() and "ADRANK_MAX_CONCURRENT_RPCS" in parser.format_help()


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[ServerConfig]:
    """`adrank serve` up to the point it would start: the config it would serve with."""
    import serving.server
    import serving.workers

    seen: list[ServerConfig] = []

    async def fake_serve_forever(config: ServerConfig, *, ready_file: str | None = None) -> None:
        seen.append(config)

    def fake_serve_workers(config: ServerConfig, n: int, *, ready_file: str | None = None) -> int:
        seen.append(config)
        return 0

    monkeypatch.setattr(serving.server, "serve_forever", fake_serve_forever)
    monkeypatch.setattr(serving.workers, "serve_workers", fake_serve_workers)  # --workers N (one per core: default)
    for f in fields(ServerConfig):
        monkeypatch.delenv(ServerConfig.env_var(f.name), raising=False)
    return seen


def test_cli_flags_override_env_which_overrides_defaults(served: list[ServerConfig],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADRANK_PORT", "7000")
    monkeypatch.setenv("ADRANK_MAX_CONCURRENT_RPCS", "32")
    monkeypatch.setenv("ADRANK_REFLECTION", "false")
    assert main(["serve", "--port", "8000", "--repository", "repo", "--no-reflection", "--cache-url",
                 "redis://cache:6379/0"]) == 0
    config = served[-1]
    assert (config.port, config.max_concurrent_rpcs, config.model_repository) == (8000, 32, "repo")
    assert (config.reflection, config.cache_backend, config.cache_location) == (False, "redis", "redis://cache:6379/0")
    assert config.max_candidates == 1000  # neither flag nor env: the default
    assert main(["serve", "--reflection"]) == 0 and served[-1].reflection is True
    monkeypatch.setenv("ADRANK_WORKERS", "3")
    assert main(["serve"]) == 0 and served[-1].workers == 3
    assert main(["serve", "--workers", "1"]) == 0 and served[-1].workers == 1


@pytest.mark.parametrize("argv,env,message", [
    (["serve", "--max-concurrent-rpcs", "0"], {}, "error: --max-concurrent-rpcs: must be within 1..1000000, got 0"),
    (["serve"], {"ADRANK_PORT": "x"}, "error: ADRANK_PORT: expected an integer, got 'x'"),
    (["serve", "--cache-url", "cache:6379"], {}, "error: --cache-dir/--cache-url: a redis cache needs a URL"),
])
def test_cli_reports_bad_values_by_flag_or_variable(served: list[ServerConfig], monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str], argv: list[str],
                                                    env: dict[str, str], message: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(argv) == 2 and not served
    assert message in capsys.readouterr().err


def test_transfer_sample_queue_and_rotation_flags_reach_the_config() -> None:
    args = build_parser().parse_args(["serve", "--request-log", "runs/log", "--transfer-sample", "0.05",
                                      "--request-log-queue", "64", "--request-log-rotate-s", "2"])
    config = ServerConfig.from_env(environ={}, transfer_sample=args.transfer_sample,
                                   request_log_queue=args.request_log_queue,
                                   request_log_rotate_s=args.request_log_rotate_s)
    assert (config.transfer_sample, config.request_log_queue, config.request_log_rotate_s) == (0.05, 64, 2.0)
    assert ServerConfig().transfer_sample == 0.01  # a small share by default
    with pytest.raises(ConfigError, match="transfer_sample: must be within 0.0..1.0"):
        ServerConfig(transfer_sample=2.0)
    with pytest.raises(ConfigError, match="request_log_queue: must be within 1..10000000"):
        ServerConfig(request_log_queue=0)


def test_request_log_flags_reach_the_config_and_the_sample_is_a_share() -> None:
    args = build_parser().parse_args(["serve", "--request-log", "runs/log", "--request-log-sample", "0.1"])
    assert (args.request_log, args.request_log_sample) == ("runs/log", 0.1)
    config = ServerConfig.from_env(environ={}, request_log=args.request_log, request_log_sample=args.request_log_sample)
    assert (config.request_log, config.request_log_sample) == ("runs/log", 0.1)
    assert ServerConfig().request_log == ""  # off unless asked for
    with pytest.raises(ConfigError, match="request_log_sample: must be within 0.0..1.0"):
        ServerConfig(request_log_sample=1.5)


def test_workers_default_to_one_per_usable_core_and_are_bounded(tmp_path):
    import os

    from serving.config import resolved_workers, usable_cores

    assert resolved_workers(ServerConfig(workers=3)) == 3
    assert resolved_workers(ServerConfig()) == usable_cores() <= len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")  # a 1.5-CPU container quota: 2 workers
    assert usable_cores(str(cpu_max)) == min(2, len(os.sched_getaffinity(0)))
    cpu_max.write_text("max 100000\n")
    assert usable_cores(str(cpu_max)) == len(os.sched_getaffinity(0))
    assert ServerConfig.from_env(environ={"ADRANK_WORKERS": "2"}).workers == 2
    with pytest.raises(ConfigError, match=r"^workers: must be within 0..256"):
        ServerConfig(workers=300)
