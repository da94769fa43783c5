"""Progress of long work for whoever watches it: a tqdm bar on a terminal, log lines everywhere else.

A bar drawn into a log file is one line of carriage returns, and tqdm's own ``disable=None`` shows nothing off a
terminal: a 40-minute match run by the scheduler, by ``ray job submit`` or under ``nohup`` said nothing between its
plan and its result. Off a terminal the same bar is written as an INFO line of the job's logger every ``every_s``
seconds (tqdm's figures: done, total, elapsed, remaining, rate), so the operator's log shows how far it is.
"""

from __future__ import annotations

import io
import logging
import sys
from typing import Any

from tqdm import tqdm

LOG_EVERY_S = 60.0
"""Seconds between two progress lines in a log."""


class _LogLines(io.TextIOBase):
    """A file for tqdm that hands each refresh of the bar to a logger as one line."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self._logger = logger

    def write(self, text: str) -> int:
        line = text.replace("\r", "").strip()
        if line:
            self._logger.info("%s", line)
        return len(text)


def bar(total: int, desc: str, unit: str, logger: logging.Logger, every_s: float = LOG_EVERY_S, **kw: Any) -> tqdm:
    """A progress bar of ``total`` ``unit``\\ s: drawn on stderr when it is a terminal, else a line to ``logger``
    every ``every_s`` seconds and one when it closes. ``kw``: more tqdm options (``unit_scale``...)."""
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=2.0, **kw)
    return tqdm(total=total, desc=desc, unit=unit, file=_LogLines(logger), mininterval=every_s, ncols=80, ascii=True,
                **kw)  # fmt: skip
