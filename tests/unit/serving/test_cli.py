"""CLI refusals that must name the flag at fault, without a traceback."""

from __future__ import annotations

from adrank.cli import main


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
