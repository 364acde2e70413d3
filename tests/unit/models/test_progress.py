"""Progress bars redraw on a terminal and stay quiet in a log file."""

from __future__ import annotations

import io
import sys

from models.progress import LOG_INTERVAL_S, progress_bar


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_a_log_file_gets_a_throttled_bar_that_keeps_its_last_line(monkeypatch) -> None:
    log = _Stream(tty=False)
    monkeypatch.setattr(sys, "stderr", log)
    items = list(progress_bar(range(5000), desc="train vm epoch 1/1"))
    assert items == list(range(5000))
    text = log.getvalue()
    assert text.count("\r") <= 3  # first draw, final draw: not one record per step
    assert "5000/5000" in text  # the final state is kept in the log


def test_a_terminal_gets_a_live_bar_and_a_disabled_bar_writes_nothing(monkeypatch) -> None:
    term = _Stream(tty=True)
    monkeypatch.setattr(sys, "stderr", term)
    bar = progress_bar(range(3), desc="fm")
    assert bar.mininterval < LOG_INTERVAL_S and bar.leave is False
    list(bar)
    quiet = _Stream(tty=True)
    monkeypatch.setattr(sys, "stderr", quiet)
    list(progress_bar(range(3), desc="fm", enabled=False))
    assert quiet.getvalue() == ""
