"""Stage 4, deduplicate: one row per listing, one listing per content.

* **content_hash** is computed here over the fields that make a listing what it is (kind, status, species, breed,
  colours, sex, age, size, name, redacted description, place, coordinates, dates, shelter, photo URLs, contact and
  chip hashes) — not over ``url``, ``source_id`` or ``scraped_at``, so an unchanged card re-crawled gives the same
  hash and the writer skips it;
* the **same source id** twice in one crawl (a card linked from two catalog pages, an API page overlapping the next)
  keeps the first and drops the rest (``homeward/duplicates/source_id``);
* the **same content** under another source id of the same source (a re-post) is dropped when the content is
  specific enough to be a real duplicate — a description of at least 40 characters or at least one photo — checked
  against this crawl and against the rows already stored (``homeward/duplicates/content``). Duplicates are not
  errors: they are counted, not put in ``errors_by_reason``.
"""

from __future__ import annotations

from typing import Any

from scrapy.exceptions import DropItem

from crawlers.items import ListingItem
from crawlers.pipelines import Stage
from crawlers.state import lance_store, sql_quote
from engine import ids

CONTENT_FIELDS = ("kind", "status", "species", "breed", "colors", "sex", "age_group", "size", "name", "description",
                  "location_text", "lat", "lon", "event_date", "posted_at", "shelter_id", "shelter_name",
                  "photo_urls", "contact_hash", "chip_hash")  # fmt: skip


def content_hash(item: Any) -> str:
    return ids.content_hash(*(item.get(k) for k in CONTENT_FIELDS))


def specific(item: Any) -> bool:
    return len(item.get("description") or "") >= 40 or bool(item.get("photo_urls"))


class DedupePipeline(Stage):
    def __init__(self, crawler: Any) -> None:
        super().__init__(crawler)
        self.seen_ids: set[str] = set()
        self.by_content: dict[str, str] | None = None

    def _stored(self, source: str) -> dict[str, str]:
        if self.by_content is None:
            self.by_content = {}
            if self.crawler.settings.getbool("HOMEWARD_INCREMENTAL"):
                store = lance_store(self.crawler)
                if store.exists("listings"):
                    rows = store.read(
                        "listings", where=f"source = {sql_quote(source)}", columns=["listing_id", "content_hash"]
                    ).to_pylist()
                    for row in rows:
                        if row["content_hash"]:
                            self.by_content.setdefault(row["content_hash"], row["listing_id"])
        return self.by_content

    def process_item(self, item: Any) -> Any:
        if not isinstance(item, ListingItem):
            return item
        item["content_hash"] = content_hash(item)
        listing_id = item["listing_id"]
        if listing_id in self.seen_ids:
            self.stats.inc_value("homeward/duplicates/source_id")
            raise DropItem(f"duplicate:source_id {item['source_id']}")
        self.seen_ids.add(listing_id)
        by_content = self._stored(item["source"])
        other = by_content.get(item["content_hash"])
        if other is not None and other != listing_id and specific(item):
            self.stats.inc_value("homeward/duplicates/content")
            raise DropItem(f"duplicate:content of {other}")
        by_content.setdefault(item["content_hash"], listing_id)
        return item
