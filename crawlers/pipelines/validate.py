"""Stage 1, validate: refuse items that cannot become a row, tidy the raw shapes, flag what is missing.

* no ``source_id`` → dropped, reason ``invalid:no_source_id`` (a listing without a stable id cannot be updated,
  only duplicated);
* ``listing_id`` = :func:`engine.ids.listing_id` (source, source_id);
* ``photo_urls``: a string becomes a list; relative URLs resolve against the page; mirror hosts are rebased; only
  http(s) URLs stay; duplicates go;
* ``lat``/``lon`` must be numbers in range (else dropped with warning ``bad_coordinates``);
* text fields are stripped; an over-long description is cut (warning ``description_truncated``);
* warning ``no_photo`` (the item goes on; ``no_date``/``no_sex``/``no_species`` are flagged after normalisation,
  which may find them in the text).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urljoin, urlsplit

from scrapy.exceptions import DropItem

from crawlers.items import ListingItem
from crawlers.pipelines import Stage
from engine import ids

MAX_DESCRIPTION = 20_000
MAX_TEXT = 1_000
WORK_SLACK = 4
"""Text is cut here at WORK_SLACK × its limit (bounding the redactor's work) and to the limit itself only after
redaction (:mod:`crawlers.pipelines.redact`): cut first, a phone across the limit would be stored half-written,
out of reach of the redactor."""
#: Tidied as text (whitespace collapsed, length capped). Dates are left as the parser gave them (an epoch number
#: must reach the normaliser as a number).
TEXT_FIELDS = ("kind", "status", "species", "breed", "sex", "age_text", "age_group", "size", "name",
               "location_text", "shelter_id", "shelter_name")  # fmt: skip


def _as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(str(value).replace(",", "."))
    except ValueError:
        return None


class ValidatePipeline(Stage):
    def process_item(self, item: Any) -> Any:
        if not isinstance(item, ListingItem):
            return item
        url = item.get("url")
        source_id = str(item.get("source_id") or "").strip()
        if not source_id:
            self.error("invalid:no_source_id", url)
            raise DropItem("invalid:no_source_id")
        item["source_id"] = source_id[:300]
        item["listing_id"] = ids.listing_id(item["source"], item["source_id"])
        item["parse_warnings"] = list(item.get("parse_warnings") or [])

        for key in TEXT_FIELDS:
            value = item.get(key)
            if value is None:
                continue
            text = " ".join(str(value).split())
            item[key] = text[: MAX_TEXT * WORK_SLACK] if text else None
        description = item.get("description")
        if description is not None:
            description = str(description).strip()
            if len(description) > MAX_DESCRIPTION:
                description = description[: MAX_DESCRIPTION * WORK_SLACK]
                self.warn(item, "description_truncated")
            item["description"] = description or None

        colors = item.get("colors")
        if isinstance(colors, (list, tuple)):
            item["colors"] = [" ".join(str(c).split()) for c in colors if c is not None and str(c).strip()]

        base = item.get("fetch_url") or url or ""
        spider = self.crawler.spider
        photos: list[str] = []
        for raw in _as_list(item.get("photo_urls")):
            if not isinstance(raw, str) or not raw.strip():
                continue
            absolute = urljoin(base, raw.strip())
            if urlsplit(absolute).scheme.lower() not in ("http", "https"):
                self.warn(item, "photo_url_not_http")
                continue
            if hasattr(spider, "rebase"):
                absolute = spider.rebase(absolute)
            if absolute not in photos:
                photos.append(absolute)
        item["photo_urls"] = photos

        lat, lon = _float(item.get("lat")), _float(item.get("lon"))
        if (item.get("lat") is not None or item.get("lon") is not None) and (
            lat is None or lon is None or not -90 <= lat <= 90 or not -180 <= lon <= 180 or (lat == 0 and lon == 0)
        ):
            self.warn(item, "bad_coordinates")
            lat = lon = None
        item["lat"], item["lon"] = lat, lon

        if not photos:
            self.warn(item, "no_photo")
        return item
