"""The request log's writer process: frames in on stdin, rotated Parquet files out, counters on stdout.

Why a process: building Arrow columns from a batch of records and encoding Parquet is Python and
C++ work that, on a thread of the server, holds the server's interpreter lock for hundreds of
microseconds at a time; with the default 5 ms switch interval the event loop's next request waits
behind it. Here it holds only this process's lock. The sink (`serving.requestlog.sink`) starts one
per serving process, writes `serving.requestlog.frames` frames into its stdin and reads one JSON line
of cumulative counters per pass from its stdout.

Priority: it runs at a nice value NICE above the server's. On a host with spare cores this changes
nothing; on one short of CPU it is what keeps a third process from taking CPU time from scoring (the
writer falls behind instead, and the sink counts what its full queue drops).

Lifetime: the process lives exactly as long as its stdin. It ignores SIGINT and SIGTERM (a signal to
the whole process group must not cost the records it holds): on end of input, or a close frame, it
writes what it holds, publishes the open file, reports and exits. If the server is SIGKILLed, the pipe
closes and the records already handed over are still published. Each file is complete or absent
(`serving.requestlog.files`); a temp file left by a killed writer is removed by the next sink.

Report lines (cumulative, so a lost line loses nothing)::

    {"ready": true, "pid": 123}
    {"written": W, "files": F, "invalid": I, "write_error": E, "flushed": T,
     "published": ["requests-...parquet", ...]}     # only when one changed; names published since the last

Usage (the sink runs it; by hand only for debugging)::

    python -m serving.requestlog.child --folder runs/requestlog < frames
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import select
import signal
import struct
import sys
import time
from pathlib import Path

from serving.requestlog.files import remove_stale_temps
from serving.requestlog.frames import CLOSE, FLUSH, RECORD, decode_record, flush_ticket, next_frame
from serving.requestlog.writer import LogWriter

log = logging.getLogger("serving.requestlog.child")
NICE = 10
"""Added to the writer's nice value: on a host short of CPU the writer falls behind (its pipe fills, the
sink's queue drops and counts) rather than taking CPU from scoring."""


def serve(fd_in: int, out, writer: LogWriter, poll_interval_s: float) -> None:  # noqa: ANN001 - a text stream
    """Reads frames from `fd_in` until its end (or a close frame), writing and reporting as it goes."""
    buffer = bytearray()
    received = flushed = corrupt = 0
    reported: dict | None = None
    n_published = 0
    done = False
    next_pass = time.monotonic()
    while not done:
        # one pass per poll interval, not one per frame: every wake-up is a context switch on a host the
        # server shares, and the frames wait meanwhile in the pipe (the sink enlarges it to 1 MiB)
        time.sleep(max(0.0, next_pass - time.monotonic()))
        next_pass = time.monotonic() + poll_interval_s
        while select.select([fd_in], [], [], 0)[0]:
            chunk = os.read(fd_in, 1 << 20)
            if chunk:
                buffer += chunk
                if len(buffer) >= 64 << 20:
                    break
                continue
            done = True  # end of input: parse what arrived, then publish and exit
            break
        records, at, publish = [], 0, done
        try:
            while (frame := next_frame(buffer, at)) is not None:
                kind, body, at = frame
                if kind == RECORD:
                    received += 1
                    try:
                        records.append(decode_record(body))
                    except (ValueError, TypeError, KeyError, OverflowError, struct.error):
                        writer.invalid += 1
                elif kind == FLUSH:
                    flushed, publish = max(flushed, flush_ticket(body)), True
                elif kind == CLOSE:
                    done = publish = True
                    break
            del buffer[:at]
            if done and buffer:  # the sender died inside a frame: that record never fully arrived
                log.warning("request log writer: input ended inside a frame (%d bytes dropped)", len(buffer))
                buffer.clear()
        except ValueError:  # a corrupt length: nothing after it can be trusted
            log.exception("request log writer: corrupt input; stopping")
            corrupt = 1
            buffer.clear()
            done = publish = True
        try:
            writer.add(records)
            if publish or writer.due():
                writer.publish()
        except Exception:  # noqa: BLE001 - a bug here must not stop the writer: count what it held
            writer.fail_pass()
        # only what the sink counts: a report wakes a thread of the serving process, so none per pass
        status = {"written": writer.written, "files": writer.n_files, "invalid": writer.invalid,
                  "write_error": writer.write_error, "flushed": flushed}
        if status != reported or len(writer.published) != n_published:
            line = json.dumps({**status, "published": writer.published[n_published:]}) + "\n"
            reported, n_published = status, len(writer.published)
            try:
                out.write(line)
                out.flush()
            except OSError:  # the sink is gone (SIGKILL): keep publishing what arrives until input ends
                pass
    if corrupt:
        sys.exit(3)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serving.requestlog.child", description=__doc__.split("\n")[0])
    p.add_argument("--folder", required=True)
    p.add_argument("--prefix", default="requests")
    p.add_argument("--row-group-rows", type=int, default=1024)
    p.add_argument("--max-file-bytes", type=int, default=64 << 20)
    p.add_argument("--max-file-age-s", type=float, default=300.0)
    p.add_argument("--poll-interval-s", type=float, default=0.05)
    p.add_argument("--compression", default="zstd")
    a = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError):  # background work: the scheduler serves the scoring process first
        os.nice(NICE)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    folder = Path(a.folder).resolve()
    remove_stale_temps(folder, a.prefix)
    writer = LogWriter(folder, prefix=a.prefix, row_group_rows=a.row_group_rows, max_file_bytes=a.max_file_bytes,
                       max_file_age_s=a.max_file_age_s, compression=a.compression)
    out = sys.stdout
    out.write(json.dumps({"ready": True, "pid": os.getpid()}) + "\n")
    out.flush()
    serve(sys.stdin.fileno(), out, writer, a.poll_interval_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
