"""CLI refusals that must name the flag at fault, without a traceback."""

from __future__ import annotations

import pytest

from adrank.cli import build_parser, main


def test_score_refuses_to_run_without_a_catalog(tmp_path, capsys):
    assert main(["score", "--user", "1", "--catalog", str(tmp_path / "absent.npz")]) == 2
    err = capsys.readouterr().err
    assert "--catalog" in err and "absent.npz" in err and "no catalog file" in err


def test_train_vm_flag_conflicts_are_named(capsys):
    assert main(["train", "vm", "--events", "10000", "--kd", "single"]) == 2
    assert "--history and --kd need --fm-checkpoint" in capsys.readouterr().err
    assert main(["train", "vm", "--events", "10000", "--adapter"]) == 2
    assert "--adapter needs --kd single or --kd aux" in capsys.readouterr().err


def test_bench_help_lists_every_benchmark(capsys):
    assert main(["bench", "--help"]) == 0
    assert "triton" in capsys.readouterr().out


def test_train_vm_from_log_is_the_events_file_flag() -> None:
    args = build_parser().parse_args(["train", "vm", "--from-log", "runs/sim/joined.npz"])
    assert args.events_file == "runs/sim/joined.npz"


@pytest.mark.parametrize("argv,module,rest", [
    (["simulate", "--target", "h:1", "--rps", "5"], "loadtests.simulate", ["--target", "h:1", "--rps", "5"]),
    (["logs", "join", "--labels", "l.parquet"], "models.logjoin", ["--labels", "l.parquet"]),
    (["replay", "--request-log", "d"], "serving.replay", ["--request-log", "d"]),
    (["monitor", "--joined", "e.npz"], "models.monitor", ["--joined", "e.npz"]),
])
def test_log_verbs_hand_their_flags_to_the_modules_main(argv, module, rest, monkeypatch) -> None:
    import importlib

    seen = []
    monkeypatch.setattr(importlib.import_module(module), "main", lambda a: seen.append(a) or 0)
    assert main(argv) == 0 and seen == [rest]
