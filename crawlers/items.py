"""What spiders yield and the pipelines carry.

:class:`ListingItem` holds one *raw* listing as a site parser returns it (site vocabulary, raw contact and chip
numbers) stamped with ``source``, ``url`` and ``scraped_at``. The pipelines validate, normalise, redact, deduplicate,
fetch its photos and finally turn it into a ``listings`` row (``engine.schema.LISTINGS``); the raw contact, chip
number and author name never leave the item pipeline.

Raw keys (all optional except ``source_id``)::

    source_id, url, kind (lost|found|sighting|shelter|adoptable), status (active|resolved), species, breed,
    colors (list[str] or str), sex, age_text, age_group, size, name, description, location_text, lat, lon,
    event_date (ISO date/datetime), posted_at (ISO datetime), shelter_id, shelter_name, photo_urls (list[str]),
    contact (raw phone/email, never stored raw), chip (raw chip/tattoo number), author_name (never stored)

Pipeline-owned keys (set by the stages, not by parsers): ``source``, ``scraped_at``, ``parse_warnings``,
``listing_id``, ``content_hash``, ``contact_hash``, ``chip_hash``, ``photo_ids``, ``photos`` (photo rows),
``change`` (new | updated | unchanged), ``fetch_url`` / ``fetch_fingerprint`` (the card URL the item was parsed
from and its catalog fingerprint, for the incremental state; ``None`` for items from catalog/API pages),
``geo_source`` (where ``lat``/``lon`` came from: ``engine.schema.GEO_SOURCES``, set by the normalise stage).
"""

from __future__ import annotations

import scrapy

#: Keys a parser may return in its raw listing dict.
RAW_KEYS: tuple[str, ...] = (
    "source_id",
    "url",
    "kind",
    "status",
    "species",
    "breed",
    "colors",
    "sex",
    "age_text",
    "age_group",
    "size",
    "name",
    "description",
    "location_text",
    "lat",
    "lon",
    "event_date",
    "posted_at",
    "shelter_id",
    "shelter_name",
    "photo_urls",
    "contact",
    "chip",
    "author_name",
)

#: Keys the pipelines add on the way to a listings row.
PIPELINE_KEYS: tuple[str, ...] = (
    "source",
    "scraped_at",
    "parse_warnings",
    "listing_id",
    "content_hash",
    "contact_hash",
    "chip_hash",
    "photo_ids",
    "photos",
    "change",
    "fetch_url",
    "fetch_fingerprint",
    "geo_source",
)


class ListingItem(scrapy.Item):
    """One raw listing plus the fields the pipelines add. Unknown keys are refused by Scrapy's Item, so
    :meth:`crawlers.spiders.base.ListingSpider.listing_item` drops them with a warning instead."""

    source_id = scrapy.Field()
    url = scrapy.Field()
    kind = scrapy.Field()
    status = scrapy.Field()
    species = scrapy.Field()
    breed = scrapy.Field()
    colors = scrapy.Field()
    sex = scrapy.Field()
    age_text = scrapy.Field()
    age_group = scrapy.Field()
    size = scrapy.Field()
    name = scrapy.Field()
    description = scrapy.Field()
    location_text = scrapy.Field()
    lat = scrapy.Field()
    lon = scrapy.Field()
    event_date = scrapy.Field()
    posted_at = scrapy.Field()
    shelter_id = scrapy.Field()
    shelter_name = scrapy.Field()
    photo_urls = scrapy.Field()
    contact = scrapy.Field()
    chip = scrapy.Field()
    author_name = scrapy.Field()
    source = scrapy.Field()
    scraped_at = scrapy.Field()
    parse_warnings = scrapy.Field()
    listing_id = scrapy.Field()
    content_hash = scrapy.Field()
    contact_hash = scrapy.Field()
    chip_hash = scrapy.Field()
    photo_ids = scrapy.Field()
    photos = scrapy.Field()
    change = scrapy.Field()
    fetch_url = scrapy.Field()
    fetch_fingerprint = scrapy.Field()
    geo_source = scrapy.Field()


FIELDS: frozenset[str] = frozenset(RAW_KEYS + PIPELINE_KEYS)
