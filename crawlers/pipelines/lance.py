"""Stage 6, write: listings and photos rows to LanceDB in bulk, then the incremental card state.

Rows are buffered and written every ``HOMEWARD_FLUSH_ITEMS`` items (500) and when the spider closes, each flush as
one ``merge_insert`` per table (a LanceDB version per flush, not per item). Order inside a flush: photos, then
listings, then ``crawl_state`` — the state that lets the next crawl skip a card is written only after that card's
rows are safely in LanceDB, so a crawl killed at any point re-fetches exactly the cards it had not written.

Each item is classified against the rows already stored for its source:

* ``new`` — no row with its ``listing_id``;
* ``updated`` — a row exists but its ``content_hash`` or ``photo_ids`` differ (the row is replaced);
* ``unchanged`` — same content and photos: nothing is written for the listing (no new version, ``scraped_at``
  keeps the first sighting).

Counts land in the crawl stats (``homeward/new``, ``homeward/updated``, ``homeward/unchanged``) and from there in
``crawl_runs``. Concurrent crawls of different sources write the same tables; a commit conflict is retried.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, date, datetime
from typing import Any

from scrapy import signals

from crawlers.items import ListingItem
from crawlers.pipelines import Stage
from crawlers.pipelines.photos import PERMANENT_REASONS
from crawlers.state import CrawlState, lance_store, sql_quote
from engine import schema
from engine.storage import upsert_listings, upsert_photos

log = logging.getLogger(__name__)


def parse_date(value: Any) -> date | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    text = str(value).strip()
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        return None


def parse_datetime(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, date):
        dt = datetime(value.year, value.month, value.day)
    else:
        text = str(value).strip().replace("Z", "+00:00")
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _colors(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [c.strip() for c in value.replace(";", ",").split(",") if c.strip()] or None
    return [str(c) for c in value if c is not None and str(c).strip()] or None


def listing_row(item: Any, warn: Any = None) -> dict[str, Any]:
    """The ``listings`` row (``engine.schema.LISTINGS``) for a processed item."""
    row = schema.empty_row(schema.LISTINGS)
    for key in row:
        if key in item.fields and item.get(key) is not None:
            row[key] = item.get(key)
    row["colors"] = _colors(item.get("colors"))
    row["event_date"] = parse_date(item.get("event_date"))
    row["posted_at"] = parse_datetime(item.get("posted_at"))
    row["scraped_at"] = parse_datetime(item.get("scraped_at")) or datetime.now(UTC)
    if warn is not None:
        if item.get("event_date") and row["event_date"] is None:
            warn(item, "bad_date:event_date")
        if item.get("posted_at") and row["posted_at"] is None:
            warn(item, "bad_date:posted_at")
    row["photo_urls"] = list(item.get("photo_urls") or [])
    row["photo_ids"] = list(item.get("photo_ids") or [])
    row["parse_warnings"] = list(item.get("parse_warnings") or [])
    for key in ("lat", "lon"):
        row[key] = float(row[key]) if row[key] is not None else None
    return row


class LanceWriterPipeline(Stage):
    def __init__(self, crawler: Any) -> None:
        super().__init__(crawler)
        self.flush_every = max(1, crawler.settings.getint("HOMEWARD_FLUSH_ITEMS", 500))
        self.store = lance_store(crawler)
        self.existing: dict[str, tuple[str | None, list[str]]] | None = None
        self.listings: dict[str, dict[str, Any]] = {}
        self.photos: dict[str, dict[str, Any]] = {}
        self.cards: dict[str, tuple[str | None, list[str], bool]] = {}
        self.pending_items = 0
        crawler.signals.connect(self.item_dropped, signal=signals.item_dropped)

    # -- Scrapy hooks --------------------------------------------------------------------------------------------

    def open_spider(self) -> None:
        self._load_existing()

    def close_spider(self) -> None:
        self.flush()
        state = self._state()
        if state is not None:
            state.flush_touched()

    def item_dropped(self, item: Any, response: Any = None, exception: Any = None, spider: Any = None) -> None:
        """A card whose listing was dropped as a duplicate is still 'done': the next crawl need not fetch it."""
        if isinstance(item, ListingItem) and item.get("fetch_url") and str(exception).startswith("duplicate:"):
            self._card(item, complete=True, listing_id=None)

    def process_item(self, item: Any) -> Any:
        if not isinstance(item, ListingItem):
            return item
        existing = self._load_existing()
        row = listing_row(item, self.warn)
        listing_id = row["listing_id"]
        before = existing.get(listing_id)
        if before is None:
            change = "new"
        elif before[0] == row["content_hash"] and list(before[1]) == row["photo_ids"]:
            change = "unchanged"
        else:
            change = "updated"
        item["change"] = change
        self.stats.inc_value(f"homeward/{change}")
        self.stats.inc_value("homeward/items")
        if change != "unchanged":
            self.listings[listing_id] = row
            existing[listing_id] = (row["content_hash"], row["photo_ids"])
        for photo in item.get("photos") or []:
            self.photos[photo["photo_key"]] = photo
        complete = all(
            (p.get("status") == "ok" or p.get("error") in PERMANENT_REASONS) for p in item.get("photos") or []
        )
        if item.get("fetch_url"):
            self._card(item, complete=complete, listing_id=listing_id)
        self.pending_items += 1
        if self.pending_items >= self.flush_every:
            self.flush()
        return item

    # -- internals -----------------------------------------------------------------------------------------------

    def _state(self) -> CrawlState | None:
        spider = self.crawler.spider
        return getattr(spider, "crawl_state", None)

    def _card(self, item: Any, *, complete: bool, listing_id: str | None) -> None:
        url = item["fetch_url"]
        fingerprint, listing_ids, was_complete = self.cards.get(url, (item.get("fetch_fingerprint"), [], True))
        if listing_id and listing_id not in listing_ids:
            listing_ids = [*listing_ids, listing_id]
        self.cards[url] = (fingerprint, listing_ids, was_complete and complete)

    def _load_existing(self) -> dict[str, tuple[str | None, list[str]]]:
        if self.existing is None:
            self.existing = {}
            source = getattr(self.crawler.spider, "source", None) or getattr(self.crawler.spider, "name", "")
            if self.store.exists("listings"):
                rows = self.store.read(
                    "listings",
                    where=f"source = {sql_quote(source)}",
                    columns=["listing_id", "content_hash", "photo_ids"],
                ).to_pylist()
                self.existing = {r["listing_id"]: (r["content_hash"], list(r["photo_ids"] or [])) for r in rows}
        return self.existing

    def flush(self) -> None:
        """Write what is buffered; on failure keep it buffered (retried at the next flush) and count the error."""
        photos, listings, cards = list(self.photos.values()), list(self.listings.values()), dict(self.cards)
        if not (photos or listings or cards):
            return
        started = time.monotonic()
        try:
            self._retry(lambda: upsert_photos(self.store, photos), "photos")
            self._retry(lambda: upsert_listings(self.store, listings), "listings")
            state = self._state()
            if state is not None and cards:
                rows = state.rows_for(cards)
                self._retry(lambda: state.write(rows), "crawl_state")
        except Exception as exc:
            self.stats.set_value("homeward/writer_failed", True)
            self.error(f"write_error:{type(exc).__name__}", None, str(exc)[:300])
            log.exception("writing %d listings / %d photos to %s failed", len(listings), len(photos), self.store.uri)
            return
        for key in [r["photo_key"] for r in photos]:
            self.photos.pop(key, None)
        for key in [r["listing_id"] for r in listings]:
            self.listings.pop(key, None)
        for url in cards:
            self.cards.pop(url, None)
        self.pending_items = 0
        self.stats.inc_value("homeward/flushes")
        log.info(
            "wrote %d listings, %d photos, %d card states in %.2fs",
            len(listings),
            len(photos),
            len(cards),
            time.monotonic() - started,
        )

    def _retry(self, write: Any, what: str, attempts: int = 8) -> None:
        for attempt in range(attempts):
            try:
                write()
                return
            except Exception as exc:
                text = str(exc).lower()
                if attempt + 1 >= attempts or not any(w in text for w in ("conflict", "retry", "concurrent")):
                    raise
                log.warning("LanceDB commit conflict writing %s, retrying: %s", what, exc)
                time.sleep(0.2 * (attempt + 1))
