"""The fast-path report: ratios to the floors measured in the same run, and the issue's targets judged
from them (figures here are made up; the real ones come from `adrank bench fastpath`)."""

from __future__ import annotations

from pathlib import Path

from loadtests.bench_fastpath import BEGIN, END, markdown, rows_table, targets, write_doc


def _lat(client: float, server: float | None = None) -> dict:
    return {"client": {"p50_us": client, "p99_us": client * 2},
            "server": None if server is None else {"p50_us": server, "p99_us": server * 2}}


def _cap(rps: float, p99: float) -> dict:
    return {"req_per_s": rps, "candidates_per_s": rps * 200, "all_grpc_ok": True, "server_not_ok": {},
            "server_ok": rps * 10, "client_p50_ms": 5.0, "client_p99_ms": 9.0, "server_p99_ms_bucket": p99,
            "per_worker": {"0": 10.0, "1": 12.0}, "load": "load average 1.00, 1.00, 1.00", "command": "h2load …"}


def _results(**over) -> dict:
    r = {"candidates": 200, "workers": 2, "date": "today", "wall_s": 1.0, "load_start": "l", "load_end": "l",
         "request_bytes": {"rows": 4000, "columns": 7000}, "response_bytes": {"rows": 5800, "columns": 5700},
         "ort_raw": {"p50_us": 100.0, "p99_us": 150.0},
         "transport_floor": {"rows": _lat(300.0), "columns": _lat(300.0)},
         "paths": {"embedded rows 1w": _lat(900.0, 500.0), "embedded columns 1w": _lat(480.0, 120.0),
                   "embedded columns 2w": _lat(470.0, 125.0)},
         "triton": {"triton columns 1w": _lat(600.0, 300.0),
                    "direct triton": {"assembly": {"p50_us": 40.0}, "infer": {"p50_us": 500.0}}},
         "capacity": {"connections": 16, "streams": 1, "duration_s": 10, "columns 1w": _cap(1000, 2.0),
                      "columns 2w": _cap(1800, 5.0)}}
    r.update(over)
    return r


def test_targets_are_judged_against_the_floors_of_the_same_run():
    got = {name: met for name, _, _, met in targets(_results())}
    assert got == {"server-side time, columns": True,  # 120 / 100 = 1.2 ≤ 1.3
                   "client p50, columns": True,  # 480 / (300 + 100) = 1.2 ≤ 1.2
                   "capacity, 2 workers vs 1 (columns, h2load)": True,  # 1.8 ≥ 1.7 at p99 5 ms
                   "Triton path vs embedded, columns": True,  # 600 / 480 = 1.25 ≤ 1.3
                   "adrank ScoreColumns vs direct Triton + assembly": True}  # 480 < 40 + 500
    # the capacity ratio counts only at server p99 ≤ 10 ms
    slow = _results(capacity={"connections": 16, "streams": 1, "duration_s": 10, "columns 1w": _cap(1000, 2.0),
                              "columns 2w": _cap(1800, 15.0)})
    assert {n: m for n, _, _, m in targets(slow)}["capacity, 2 workers vs 1 (columns, h2load)"] is False
    slower = _results(paths={**_results()["paths"], "embedded columns 1w": _lat(700.0, 200.0)})
    got = {n: m for n, _, _, m in targets(slower)}
    assert not got["server-side time, columns"] and not got["client p50, columns"]


def test_busy_polled_paths_are_judged_against_a_busy_polled_floor():
    r = _results(busy_poll_us=300, transport_floor_busy={"rows": _lat(200.0), "columns": _lat(250.0)},
                 paths={**_results()["paths"], "embedded columns 1w, busy poll": _lat(420.0, 110.0),
                        "embedded rows 1w, busy poll": _lat(800.0, 450.0)})
    got = {name: met for name, _, _, met in targets(r)}
    # 420 / (250 + 100) = 1.2 against its own floor (against the plain one, 300 + 100, it would be 1.05)
    assert got["client p50, columns, busy poll 300 µs"] is True
    assert got["server-side time, columns, busy poll 300 µs"] is True  # 110 / 100
    assert got["adrank ScoreColumns, busy poll 300 µs vs direct Triton + assembly"] is True  # 420 < 540
    table = {row["path"]: row for row in rows_table(r)}
    assert table["embedded columns 1w, busy poll"]["vs_floor"] == 420 / 350
    assert table["embedded rows 1w, busy poll"]["vs_floor"] == 800 / 300
    assert table["transport floor, columns response size, busy poll (floor)"]["client_p50_us"] == 250.0
    slow = _results(busy_poll_us=300, transport_floor_busy={"rows": _lat(200.0), "columns": _lat(200.0)},
                    paths={**_results()["paths"], "embedded columns 1w, busy poll": _lat(420.0, 110.0)})
    assert {n: m for n, _, _, m in targets(slow)}["client p50, columns, busy poll 300 µs"] is False  # 420 / 300


def test_every_path_is_a_ratio_to_transport_floor_plus_raw_onnxruntime():
    table = {row["path"]: row for row in rows_table(_results())}
    assert table["embedded rows 1w"]["vs_floor"] == 900 / 400 and table["embedded rows 1w"]["server_vs_ort"] == 5.0
    direct = table["direct Triton call (tritonclient) + caller's tensor assembly"]
    assert direct["client_p50_us"] == 540.0


def test_the_report_rewrites_only_its_own_block(tmp_path: Path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nhand-written\n")
    write_doc(doc, markdown(_results(), "adrank bench fastpath"))
    write_doc(doc, markdown(_results(), "adrank bench fastpath --quick"))
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nhand-written\n") and text.count(BEGIN) == 1 and text.count(END) == 1
    assert "`adrank bench fastpath --quick`" in text and "| columns 2w | 1,800 |" in text


def test_the_in_process_stage_table_is_a_ratio_to_raw_onnxruntime():
    stages = {"decode": 10.0, "validate": 5.0, "route": 3.0, "history": 1.0, "features": 6.0, "infer": 110.0,
              "rank": 7.0, "encode": 8.0}
    r = _results(in_process={"columns": {"total": {"p50_us": 150.0, "p99_us": 300.0}, "stages": stages}})
    text = markdown(r, "adrank bench fastpath")
    assert "| columns | 10.0 | 5.0 | 3.0 | 1.0 | 6.0 | 110.0 | 7.0 | 8.0 | 150 | 1.50× |" in text
    assert "| columns |" not in markdown(_results(), "adrank bench fastpath")  # absent when not measured


def test_cpu_use_adds_each_workers_threads_up_and_leaves_the_waiting_parent_out():
    from loadtests.bench_fastpath import cpu_markdown, cpu_use

    before = {(1, 1): ("python", 5.0), (2, 2): ("python", 1.0), (2, 3): ("event_engine", 0.0),
              (3, 4): ("python", 2.0)}
    after = {(1, 1): ("python", 5.1), (2, 2): ("python", 3.0), (2, 3): ("event_engine", 0.2),
             (2, 9): ("grpc_poll", 0.2), (3, 4): ("python", 3.5)}  # thread 9 started during the run
    got = cpu_use(before, after, 2.0, main_pid=1)
    assert [round(p["cores"], 6) for p in got["per_process"]] == [1.2, 0.75]
    assert got["per_process"][0] == {**got["per_process"][0], "threads": 3, "busiest_thread": "python"}
    assert round(got["cores"], 6) == 1.95
    cap = {"columns 2w": {**_cap(1800, 5.0), "server_cpu": got, "h2load_cores": 0.1}}
    assert "| columns 2w | 1.95 | 1.20, 3 threads, python (1.00); 0.75, 1 threads, python (0.75) | 0.10 |" in \
        "\n".join(cpu_markdown(cap))
