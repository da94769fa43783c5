"""Long work reports progress off a terminal too: as log lines of the job's logger, not a bar of carriage returns."""

from __future__ import annotations

import logging

from engine import progress


def test_off_a_terminal_the_bar_is_log_lines(monkeypatch, caplog, capsys) -> None:
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False)
    logger = logging.getLogger("homeward.test.progress")
    with caplog.at_level(logging.INFO, logger=logger.name):
        bar = progress.bar(10, "match", " pairs", logger, every_s=0)
        bar.update(4)
        bar.update(6)
        bar.close()
    lines = [r.getMessage() for r in caplog.records if r.name == logger.name]
    assert len(lines) >= 2 and all("\r" not in line and line.startswith("match") for line in lines)
    assert any("4/10" in line for line in lines)
    assert "10/10" in lines[-1]
    assert capsys.readouterr().err == ""  # nothing drawn on stderr


def test_lines_are_spaced_by_the_interval(monkeypatch, caplog) -> None:
    """A bar updated many times within the interval logs its start and its end, not every update."""
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False)
    logger = logging.getLogger("homeward.test.progress")
    with caplog.at_level(logging.INFO, logger=logger.name):
        bar = progress.bar(1000, "match", " pairs", logger, every_s=3600.0)
        for _ in range(1000):
            bar.update(1)
        bar.close()
    lines = [r.getMessage() for r in caplog.records if r.name == logger.name]
    assert 1 <= len(lines) <= 3 and "1000/1000" in lines[-1]


def test_the_interval_comes_from_the_environment_and_a_bad_value_only_warns(monkeypatch, caplog) -> None:
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False)
    logger = logging.getLogger("homeward.test.progress")
    monkeypatch.setenv("HW_PROGRESS_EVERY_S", "0.25")
    assert progress.bar(10, "match", " pairs", logger).mininterval == 0.25
    monkeypatch.setenv("HW_PROGRESS_EVERY_S", "soon")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        assert progress.bar(10, "match", " pairs", logger).mininterval == progress.LOG_EVERY_S
    assert "HW_PROGRESS_EVERY_S='soon' is not a number" in caplog.text
