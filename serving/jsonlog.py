"""One-line JSON log records, from the standard library's logging.

Why: a log shipper (Fluent Bit, Vector, Loki) indexes fields, not prose; a request's id, model
version, status code and latency must be fields to be searched and counted. `JsonFormatter` writes
each record as one JSON object per line: time, level, logger, message, the exception (traceback as one
escaped string, never several lines) and every field passed with `extra=` (the access log's
request_id, model, version, code, latency_ms…). Values are escaped by `json.dumps`, so a hostile
request_id cannot forge a line. Extra fields whose name says they hold a secret are written as
"[redacted]"; the server never passes tokens or keys to a logger in the first place.

`configure(fmt)` installs it (or the plain text format) on the root logger; `adrank serve` calls it
with `ServerConfig.log_format`.

Usage::

    configure("json")
    logging.getLogger("serving").info("ready", extra={"model": "vm", "version": 3})
    # {"ts":"2026-12-01T12:00:00.123Z","level":"INFO","logger":"serving","msg":"ready","model":"vm","version":3}
"""

from __future__ import annotations

import json
import logging
import sys
import time

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
SECRET_WORDS = ("token", "password", "secret", "authorization", "api_key", "private_key")
"""An extra field whose name contains one of these is never written as is."""
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """A LogRecord as one line of JSON (see the module docstring for the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key in _STANDARD or key.startswith("_"):
                continue
            lowered = key.lower()
            out[key] = "[redacted]" if any(w in lowered for w in SECRET_WORDS) else value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False, separators=(",", ":"))


def configure(fmt: str = "text", level: int = logging.INFO) -> None:
    """Root logger to stderr in `fmt` ('text' or 'json'), replacing handlers installed before."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be 'text' or 'json', got {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
