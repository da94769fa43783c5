"""Stage 2, normalise: site vocabulary (Russian and English) → Homeward's vocabularies and ISO dates.

The mapping itself is ``engine.normalize.normalize_listing(raw, *, tz, country, shelters) -> dict`` (species, sex,
colour, age and size vocabularies, date parsing in the source's time zone, and the listing's place: ``lat``/``lon``
and ``geo_source`` from the page, its place text or its shelter; it returns the same keys plus ``parse_warnings``).
The source's ``timezone``, ``country`` and ``shelters`` come from the Scrapy settings ``HOMEWARD_SOURCE_TIMEZONE``,
``HOMEWARD_SOURCE_COUNTRY`` and ``HOMEWARD_SHELTERS`` (``crawlers/settings.py``). This stage only calls it — the
function is named by the Scrapy setting ``HOMEWARD_NORMALIZER`` (``module:function``) and imported lazily, so tests
can plug in a fixture — and then guards the result against the schema's vocabularies (``engine.schema``): a value
outside them becomes ``unknown`` (or ``None`` for kind/status) with warning ``bad_vocab:<field>``, so matching never
sees a stray word. Warnings ``no_date``, ``no_sex``, ``no_species`` are raised here, after normalisation.

A normaliser that raises drops the item with reason ``normalise_error:<ExceptionName>`` (the card is fetched again
on the next crawl). A configured normaliser that cannot be imported fails the crawl at start; while the default
``engine.normalize`` is absent (a partial checkout), items pass unchanged with warning ``not_normalised``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

from scrapy.exceptions import DropItem

from crawlers.items import RAW_KEYS, ListingItem
from crawlers.pipelines import Stage
from engine import schema

log = logging.getLogger(__name__)

VOCAB: dict[str, tuple[tuple[str, ...], str | None]] = {
    "species": (schema.SPECIES, "unknown"),
    "sex": (schema.SEXES, "unknown"),
    "age_group": (schema.AGE_GROUPS, "unknown"),
    "size": (schema.SIZES, "unknown"),
    "kind": (schema.KINDS, None),
    "status": (schema.LISTING_STATUSES, "active"),
}


DEFAULT_TARGET = "engine.normalize:normalize_listing"


def _identity(raw: dict[str, Any], **_source: Any) -> dict[str, Any]:
    return {**raw, "parse_warnings": ["not_normalised"]}


def resolve(target: str) -> Callable[..., dict[str, Any]]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name or "normalize_listing")


class NormalizePipeline(Stage):
    def __init__(self, crawler: Any) -> None:
        super().__init__(crawler)
        self.target = crawler.settings.get("HOMEWARD_NORMALIZER") or DEFAULT_TARGET
        self.fn: Callable[..., dict[str, Any]] | None = None
        tz = crawler.settings.get("HOMEWARD_SOURCE_TIMEZONE")
        self.source = {
            "tz": ZoneInfo(tz) if tz else None,
            "country": crawler.settings.get("HOMEWARD_SOURCE_COUNTRY"),
            "shelters": dict(crawler.settings.getdict("HOMEWARD_SHELTERS")),
        }

    def open_spider(self) -> None:
        try:
            self.fn = resolve(self.target)
        except (ImportError, AttributeError):
            if self.target != DEFAULT_TARGET:
                raise  # a configured normaliser that does not exist stops the crawl before any page is fetched
            log.error("%s is not available: listings pass un-normalised (warning not_normalised)", self.target)
            self.fn = _identity

    def process_item(self, item: Any) -> Any:
        if not isinstance(item, ListingItem):
            return item
        if self.fn is None:
            self.open_spider()
        assert self.fn is not None
        raw = {k: item.get(k) for k in RAW_KEYS if item.get(k) is not None}
        try:
            out = self.fn(dict(raw), **self.source) or {}
        except Exception as exc:
            self.error(f"normalise_error:{type(exc).__name__}", item.get("url"), str(exc)[:300])
            raise DropItem(f"normalise_error:{type(exc).__name__}") from exc
        for key, value in out.items():
            if key == "parse_warnings":
                for w in value or []:  # "kind: unrecognised value 'x'" is counted as "normalise:kind"
                    text = str(w)
                    self.warn(item, text, stat=f"normalise:{text.split(':', 1)[0].strip()[:40]}")
            elif key in (*RAW_KEYS, "geo_source") and key != "source_id":
                item[key] = value
        for key, (allowed, fallback) in VOCAB.items():
            value = item.get(key)
            if value is None:
                if fallback is not None and key != "status":
                    item[key] = fallback
                continue
            if isinstance(value, str) and value.strip().lower() in allowed:
                item[key] = value.strip().lower()
            else:
                self.warn(item, f"bad_vocab:{key}")
                item[key] = fallback
        if not item.get("status"):
            item["status"] = "active"
        if not item.get("event_date") and not item.get("posted_at"):
            self.warn(item, "no_date")
        if item.get("sex") in (None, "unknown"):
            self.warn(item, "no_sex")
        if item.get("species") in (None, "unknown"):
            self.warn(item, "no_species")
        return item
