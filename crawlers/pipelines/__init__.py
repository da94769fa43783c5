"""Item pipeline stages, one module each, in this order (``crawlers/settings.py`` wires them):

``validate`` (100) → ``normalize`` (200) → ``redact`` (300) → ``dedupe`` (400) → ``photos`` (500) → ``lance`` (900).

Every stage keeps the crawl going: a bad item is dropped with its reason counted under ``homeward/errors/<reason>``
(and logged with its URL), a doubtful one keeps going with a ``parse_warnings`` entry counted under
``homeward/warnings/<reason>``. Items that are not :class:`~crawlers.items.ListingItem` pass through untouched.
"""

from __future__ import annotations

from typing import Any

from crawlers.spiders.base import ERROR_STAT_PREFIX, WARNING_STAT_PREFIX, record_error


class Stage:
    """Common plumbing: the crawler, its stats, warning and error helpers. Each stage reads its own settings."""

    def __init__(self, crawler: Any) -> None:
        self.crawler = crawler
        self.stats = crawler.stats

    @classmethod
    def from_crawler(cls, crawler: Any) -> Stage:
        return cls(crawler)

    def warn(self, item: Any, reason: str, stat: str | None = None) -> None:
        """Add ``reason`` to the item's ``parse_warnings``; count it under ``stat`` (default: the reason itself —
        pass a short key when the reason carries a value, so the run's counts keep few distinct keys)."""
        warnings = list(item.get("parse_warnings") or [])
        if reason not in warnings:
            warnings.append(reason)
        item["parse_warnings"] = warnings
        self.stats.inc_value(WARNING_STAT_PREFIX + (stat or reason))

    def error(self, reason: str, url: str | None = None, detail: str | None = None) -> None:
        record_error(self.crawler, reason, url, detail)


__all__ = ["ERROR_STAT_PREFIX", "WARNING_STAT_PREFIX", "Stage"]
