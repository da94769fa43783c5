"""Per-source crawl state: which card pages are already stored, so a re-crawl fetches only what may have changed.

The state is a LanceDB table ``crawl_state`` beside ``listings`` (so it lives wherever the data lives, local disk or
object storage, and needs no extra service). One row per card URL a source has stored::

    key (hash of source + url), source, url, fingerprint, listing_ids, complete, fetched_at

A card request found on a catalog page is **skipped** when its row says the card is stored and *complete* (its
listing was written and none of its photos failed for a transient reason), unless

* the catalog entry that links it changed: spiders pass a ``fingerprint`` with the card request (the catalog tile's
  text: title, status badge, date — see :meth:`crawlers.spiders.base.ListingSpider.card_request`), and a different
  fingerprint means the card changed (a lost pet marked found, a new photo); or
* the card is due for a re-check (``recheck_hours`` of the source, default one week; 0 re-checks every card). A
  re-check is a conditional request (``If-Modified-Since`` = the last fetch), so a server that supports it answers
  ``304 Not Modified`` without a body.

Why this and not Scrapy's ``HTTPCACHE``: the HTTP cache stores every response body on disk and only saves bandwidth
when the server sends usable cache headers (most lost-and-found sites send ``no-cache``); it cannot say "this card
is already in LanceDB" and it grows without bound. This state is a few hundred bytes per card, is written *after*
the card's rows are flushed to LanceDB (so a crawl killed mid-way re-fetches exactly the cards whose rows were not
written, and a restarted crawl ends with the rows of an uninterrupted one), and survives moving the data dir. The
price: a change that shows neither in the catalog fingerprint nor before the re-check interval is picked up late.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pyarrow as pa

from engine import ids
from engine.storage import LanceStore, PhotoStore

log = logging.getLogger(__name__)

TABLE = "crawl_state"
SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("url", pa.string()),
        pa.field("fingerprint", pa.string()),
        pa.field("listing_ids", pa.list_(pa.string())),
        pa.field("complete", pa.bool_()),
        pa.field("fetched_at", pa.timestamp("us", tz="UTC")),
    ]
)


def sql_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def state_key(source: str, url: str) -> str:
    return ids.content_hash("card", source, url)


@dataclass
class CardRecord:
    url: str
    fingerprint: str | None
    listing_ids: list[str]
    complete: bool
    fetched_at: datetime | None


class CrawlState:
    """The stored card state of one source, loaded once when the spider opens."""

    def __init__(self, store: LanceStore, source: str, recheck_hours: float | None = None) -> None:
        self.store = store
        self.source = source
        self.recheck = timedelta(hours=recheck_hours) if recheck_hours is not None else timedelta(days=7)
        self.cards: dict[str, CardRecord] = {}
        self.touched: dict[str, CardRecord] = {}
        if store.exists(TABLE):
            rows = store.read(TABLE, where=f"source = {sql_quote(source)}").to_pylist()
            for row in rows:
                fetched = row["fetched_at"]
                self.cards[row["url"]] = CardRecord(
                    row["url"], row["fingerprint"], list(row["listing_ids"] or []), bool(row["complete"]), fetched
                )
        log.info("crawl state for %s: %d cards stored", source, len(self.cards))

    @classmethod
    def from_crawler(cls, crawler: Any, source: str) -> CrawlState:
        recheck = crawler.settings.get("HOMEWARD_RECHECK_HOURS")
        return cls(lance_store(crawler), source, float(recheck) if recheck not in (None, "") else None)

    def filter_card(self, request: Any, response: Any = None) -> Any:
        """The request to send for a card linked from a catalog page, or ``None`` to skip it (already stored)."""
        fingerprint = request.meta.get("hw_fingerprint")
        record = self.cards.get(request.url)
        if record is None or not record.complete:
            return request
        if fingerprint is not None and record.fingerprint is not None and fingerprint != record.fingerprint:
            return request
        now = datetime.now(UTC)
        if record.fetched_at is None or now - record.fetched_at >= self.recheck:
            headers = dict(request.headers.to_unicode_dict())
            if record.fetched_at is not None:
                headers["If-Modified-Since"] = format_datetime(record.fetched_at.astimezone(UTC), usegmt=True)
            meta = {**request.meta, "hw_conditional": True}
            meta.setdefault("handle_httpstatus_list", [304])
            return request.replace(headers=headers, meta=meta)
        return None

    def not_modified(self, url: str) -> None:
        """A conditional re-check answered 304: the card is unchanged; remember that it was checked now."""
        record = self.cards.get(url)
        if record is not None:
            record.fetched_at = datetime.now(UTC)
            self.touched[url] = record

    def rows_for(self, cards: dict[str, tuple[str | None, list[str], bool]]) -> list[dict[str, Any]]:
        """State rows for ``{url: (fingerprint, listing_ids, complete)}`` just written to LanceDB."""
        now = datetime.now(UTC)
        rows = []
        for url, (fingerprint, listing_ids, complete) in cards.items():
            self.cards[url] = CardRecord(url, fingerprint, listing_ids, complete, now)
            rows.append(
                {
                    "key": state_key(self.source, url),
                    "source": self.source,
                    "url": url,
                    "fingerprint": fingerprint,
                    "listing_ids": listing_ids,
                    "complete": complete,
                    "fetched_at": now,
                }
            )
        return rows

    def write(self, rows: list[dict[str, Any]]) -> int:
        return self.store.upsert(TABLE, rows, key="key", table_schema=SCHEMA) if rows else 0

    def flush_touched(self) -> int:
        rows = [
            {
                "key": state_key(self.source, r.url),
                "source": self.source,
                "url": r.url,
                "fingerprint": r.fingerprint,
                "listing_ids": r.listing_ids,
                "complete": r.complete,
                "fetched_at": r.fetched_at,
            }
            for r in self.touched.values()
        ]
        self.touched.clear()
        return self.write(rows)


def required_setting(crawler: Any, key: str) -> Any:
    """A Homeward key of the Scrapy settings that :func:`crawlers.settings.scrapy_settings` always sets."""
    value = crawler.settings.get(key)
    if value in (None, ""):
        raise RuntimeError(
            f"Scrapy setting {key} is not set: build the settings with crawlers.settings.scrapy_settings"
        )
    return value


def lance_store(crawler: Any) -> LanceStore:
    """The LanceDB store this crawl reads and writes (``HOMEWARD_LANCE_URI``, ``HOMEWARD_STORAGE_OPTIONS``)."""
    return LanceStore(
        required_setting(crawler, "HOMEWARD_LANCE_URI"), crawler.settings.getdict("HOMEWARD_STORAGE_OPTIONS")
    )


def photo_store(crawler: Any) -> PhotoStore:
    """The photo store this crawl writes (``HOMEWARD_PHOTO_STORE``, ``HOMEWARD_STORAGE_OPTIONS``)."""
    return PhotoStore(
        required_setting(crawler, "HOMEWARD_PHOTO_STORE"), crawler.settings.getdict("HOMEWARD_STORAGE_OPTIONS")
    )
