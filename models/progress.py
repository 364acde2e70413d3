"""Training progress bars that suit both a terminal and a log file.

On a terminal the bar redraws ten times a second and disappears when done. Redirected to a file
(a batch job, `nohup`, CI), every redraw would be another carriage-return record, and a 15-minute
experiment would write megabytes of them; there the bar writes at most one line every
`LOG_INTERVAL_S` seconds and keeps its final line, so the log still shows progress and loss.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
LOG_INTERVAL_S = 30.0


def progress_bar(iterable: Iterable[T], *, desc: str, enabled: bool = True) -> tqdm:
    """A tqdm bar over `iterable`, throttled when stderr is not a terminal."""
    interactive = sys.stderr.isatty()
    return tqdm(iterable, desc=desc, disable=not enabled, leave=not interactive,
                mininterval=0.1 if interactive else LOG_INTERVAL_S)


def progress_write(message: str) -> None:
    """A line of progress that does not break a live bar on a terminal."""
    tqdm.write(message)
