"""The request log: one Parquet row per scored request, written without ever blocking scoring.

* `sink`: `RequestLogSink` (bounded queue, drops counted, background writer, Prometheus counters),
  `SinkConfig`, `sampled` (the deterministic sample by request id);
* `files`: rotated Parquet files published by atomic rename (complete or absent);
* `records`: `record_from_exchange`, a record from a Score request and its response.

The record schema itself (`RequestRecord`, `REQUEST_LOG_SCHEMA`, `read_request_log`) lives in
`models.data.requestlog`, where the offline readers (the label join) import it without the server.

Usage::

    from serving.requestlog import RequestLogSink, SinkConfig, record_from_exchange
    sink = RequestLogSink(SinkConfig(folder="runs/requestlog"), registry=metrics.registry)
    sink.offer(record_from_exchange(request, response, stage_us=timings))
"""

from models.data.requestlog import REQUEST_LOG_SCHEMA, RequestRecord, read_request_log
from serving.requestlog.records import record_from_exchange
from serving.requestlog.sink import DROP_REASONS, WRITERS, RequestLogSink, SinkConfig, SinkStats, sampled

__all__ = [
    "DROP_REASONS",
    "REQUEST_LOG_SCHEMA",
    "RequestLogSink",
    "RequestRecord",
    "SinkConfig",
    "SinkStats",
    "WRITERS",
    "read_request_log",
    "record_from_exchange",
    "sampled",
]
