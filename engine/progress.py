"""Progress of long work for whoever watches it: a tqdm bar on a terminal, log lines everywhere else.

A bar drawn into a log file is one line of carriage returns, and tqdm's own ``disable=None`` shows nothing off a
terminal: a 40-minute match run by the scheduler, by ``ray job submit`` or under ``nohup`` said nothing between its
plan and its result. Off a terminal the same bar is written as an INFO line of the job's logger every ``every_s``
seconds (tqdm's figures: done, total, elapsed, remaining, rate), so the operator's log shows how far it is.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from typing import Any

from tqdm import tqdm

LOG_EVERY_S = 60.0
"""Seconds between two progress lines in a log, unless ``HW_PROGRESS_EVERY_S`` says otherwise."""


def _every_s(logger: logging.Logger) -> float:
    """``HW_PROGRESS_EVERY_S``, or :data:`LOG_EVERY_S` when unset or not a number (said once per bar: a progress
    setting never stops a job)."""
    raw = os.environ.get("HW_PROGRESS_EVERY_S", "")
    try:
        return max(0.0, float(raw)) if raw else LOG_EVERY_S
    except ValueError:
        logger.warning("HW_PROGRESS_EVERY_S=%r is not a number of seconds: progress every %.0f s", raw, LOG_EVERY_S)
        return LOG_EVERY_S


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


def bar(total: int, desc: str, unit: str, logger: logging.Logger, every_s: float | None = None, **kw: Any) -> tqdm:
    """A progress bar of ``total`` ``unit``\\ s: drawn on stderr when it is a terminal, else a line to ``logger``
    every ``every_s`` seconds (default: ``HW_PROGRESS_EVERY_S`` or :data:`LOG_EVERY_S`) and one when it closes.
    ``kw``: more tqdm options (``unit_scale``...)."""
    every_s = _every_s(logger) if every_s is None else every_s
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=2.0, **kw)
    return tqdm(total=total, desc=desc, unit=unit, file=_LogLines(logger), mininterval=every_s, ncols=80, ascii=True,
                **kw)  # fmt: skip
