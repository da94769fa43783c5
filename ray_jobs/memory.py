"""Resident memory of this process, now and at its peak over a block: the benchmarks' ``peak_*_mb`` figures and
``homeward match``'s peak per phase.

``ru_maxrss`` gives only the lifetime peak of the process; a bench that reports one stage's peak samples RSS on a
thread instead (every ``interval`` seconds: a spike shorter than that can be missed, which is why the intervals are
short).
"""

from __future__ import annotations

import contextlib
import os
import threading


def rss_mb() -> float:
    """This process's resident set size in MiB (NaN where /proc is unavailable)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def tree_rss_mb() -> float:
    """Resident memory of this process and all its descendants in MiB: with a local Ray, its GCS and raylet are this
    process's children and its workers the raylet's, so a Ray job's memory is the tree's."""
    import psutil

    me = psutil.Process()
    total = me.memory_info().rss
    for proc in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):  # a worker may exit between listing and reading
            total += proc.memory_info().rss
    return total / 2**20


class PeakRss:
    """Samples resident memory every ``interval`` seconds inside a ``with`` block; ``peak`` in MiB. ``tree``: this
    process and its descendants (:func:`tree_rss_mb`), else this process alone."""

    def __init__(self, interval: float = 0.05, tree: bool = False) -> None:
        self.interval = interval
        self._sample = tree_rss_mb if tree else rss_mb
        self.peak = 0.0
        self._lap_peak = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakRss:
        self.peak = self._lap_peak = self._sample()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            now = self._sample()
            self.peak = max(self.peak, now)
            self._lap_peak = max(self._lap_peak, now)

    def lap(self) -> float:
        """The peak since the previous lap (or the start of the block); the next lap starts from the current RSS.
        Phases of one job (``match``: load, score, publish) each get their own peak from one sampler."""
        now = self._sample()
        peak, self._lap_peak = max(self._lap_peak, now), now
        self.peak = max(self.peak, now)
        return peak

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, self._sample())
