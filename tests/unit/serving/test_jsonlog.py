"""JSON log records (serving.jsonlog) and the access log's sampling and per-code rate limit
(serving.access_log). The same against a real server process: tests/integration/test_json_logs.py."""

from __future__ import annotations

import io
import json
import logging

import pytest

from serving.access_log import MAX_ID_CHARS, AccessLog
from serving.jsonlog import JsonFormatter, configure


def _logger() -> tuple[logging.Logger, io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"test.jsonlog.{id(out)}")
    logger.handlers, logger.propagate = [handler], False
    logger.setLevel(logging.INFO)
    return logger, out


def test_a_record_is_one_json_line_with_its_extra_fields_and_secrets_redacted() -> None:
    logger, out = _logger()
    logger.info("score %s", "OK", extra={"request_id": "a\nb\"c", "version": 3, "auth_token": "s3cret",
                                          "Authorization": "Bearer s3cret"})
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # the newline in request_id and the traceback are escaped, not new lines
    first, second = (json.loads(line) for line in lines)
    assert first["msg"] == "score OK" and first["level"] == "INFO" and first["request_id"] == "a\nb\"c"
    assert first["version"] == 3 and first["ts"].endswith("Z")
    assert first["auth_token"] == first["Authorization"] == "[redacted]" and "s3cret" not in out.getvalue()
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exc"]


def test_configure_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="log format must be 'text' or 'json'"):
        configure("yaml")


class Clock:
    t = 100.0

    def __call__(self) -> float:
        return self.t


def test_access_log_samples_ok_and_rate_limits_each_failure_code(caplog) -> None:
    clock = Clock()
    access = AccessLog(ok_sample=0.5, failures_per_s=3, clock=clock, rng=iter([0.1, 0.9, 0.4, 0.6] * 10).__next__)
    caplog.set_level(logging.INFO, logger="adrank.access")
    kw = dict(model="vm", version=2, latency_s=0.0015)
    ok = [access.record(request_id=f"r{i}", code="OK", backend="embedded", candidates=5, **kw) for i in range(4)]
    assert ok == [True, False, True, False]
    bad = [access.record(request_id="x" * 10_000, code="INVALID_ARGUMENT", detail="d" * 5000, **kw)
           for _ in range(10)]
    assert bad == [True] * 3 + [False] * 7
    assert access.record(request_id="u", code="UNAVAILABLE", **kw)  # its own budget
    clock.t += 1.0
    assert access.record(request_id="y", code="INVALID_ARGUMENT", **kw)
    records = [r for r in caplog.records if r.name == "adrank.access"]
    assert [r.code for r in records] == ["OK", "OK"] + ["INVALID_ARGUMENT"] * 3 + ["UNAVAILABLE", "INVALID_ARGUMENT"]
    assert records[0].request_id == "r0" and records[0].backend == "embedded" and records[0].latency_ms == 1.5
    assert len(records[2].request_id) == MAX_ID_CHARS and len(records[2].detail) == 300
    assert records[-1].suppressed == 7 and records[-1].levelno == logging.WARNING
