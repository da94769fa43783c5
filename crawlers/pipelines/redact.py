"""Stage 3, redact: no stored text carries a phone, an email, a messenger handle or profile link, a street-level
address or a chip number.

* every free-text field (:data:`TEXT_FIELDS`: description, name, place, breed, colours, age, shelter name — a parser
  may put a contact in any of them) and every ``parse_warnings`` entry (they quote raw values) goes through
  :func:`engine.redact.redact` (``[phone]``, ``[email]``, ``[handle]``, ``[profile]``, ``[address]``, ``[chip]``
  placeholders);
* identifiers are no free text but a page fills them too: a contact in ``source_id`` or ``shelter_id`` (a site
  numbering posts by the poster's phone) is redacted the same way — the ``listing_id`` was derived from the raw id
  before this stage, so rows stay apart and a re-crawl finds the same row; a ``url`` holding a contact (a card whose
  JSON-LD ``url`` is the owner's profile) is replaced by the card page it was fetched from, or dropped when that
  holds one too. ``photo_urls`` stay as they are: the photos stage must fetch them;
* phones are read in the source's region first (``phone_region`` in its sources entry, passed as the Scrapy
  setting ``HOMEWARD_PHONE_REGION``; without one: RU, US, UA, BY, GB in that order);
* ``contact`` (or, when the card has none, the first email/phone/handle found in the text) becomes
  ``contact_hash`` = :func:`engine.ids.salted_hash` of its canonical form (E.164 for a phone) with
  ``settings.salt``; ``chip`` (or a chip/tattoo number found in the text) becomes ``chip_hash`` the same way;
* the raw ``contact``, ``chip`` and ``author_name`` are removed from the item, so nothing downstream (the writer,
  a ``-O out.jsonl`` feed) ever sees them.
"""

from __future__ import annotations

from typing import Any

from crawlers.items import ListingItem
from crawlers.pipelines import Stage
from crawlers.pipelines.validate import MAX_DESCRIPTION, MAX_TEXT
from crawlers.state import required_setting
from engine import ids, phones
from engine.redact import Redaction, canonical_chip, canonical_contact, redact

TEXT_FIELDS = ("description", "name", "location_text", "breed", "colors", "age_text", "shelter_name")
ID_FIELDS = ("source_id", "shelter_id")
PRIVATE_FIELDS = ("contact", "chip", "author_name")


class RedactPipeline(Stage):
    def __init__(self, crawler: Any) -> None:
        super().__init__(crawler)
        self.regions = phones.regions(crawler.settings.get("HOMEWARD_PHONE_REGION"))
        self.salt = str(required_setting(crawler, "HOMEWARD_SALT"))

    def process_item(self, item: Any) -> Any:
        if not isinstance(item, ListingItem):
            return item
        found = Redaction("")
        for key in TEXT_FIELDS:
            value = item.get(key)
            if not value:
                continue
            limit = MAX_DESCRIPTION if key == "description" else MAX_TEXT
            if isinstance(value, list | tuple):
                item[key] = [self._redact(v, key, found)[:limit] if isinstance(v, str) else v for v in value]
            else:
                item[key] = self._redact(str(value), key, found)[:limit]
        for key in ID_FIELDS:
            result = self._contact_in(item.get(key))
            if result is not None:
                item[key] = result.text
                self.stats.inc_value(f"homeward/redacted/{key}")
        if self._contact_in(item.get("url")) is not None:
            self.stats.inc_value("homeward/redacted/url")
            fetched = item.get("fetch_url")
            item["url"] = fetched if self._contact_in(fetched) is None else None
        if item.get("parse_warnings"):
            item["parse_warnings"] = [self._redact(str(w), "parse_warnings", found) for w in item["parse_warnings"]]

        contact = item.get("contact")
        if isinstance(contact, list | tuple):
            contact = next((str(c) for c in contact if c), None)
        canonical = canonical_contact(str(contact), self.regions) if contact else None
        if canonical is None:
            for candidate in found.emails + found.phones + found.handles:
                canonical = canonical_contact(candidate, self.regions)
                if canonical:
                    break
        item["contact_hash"] = ids.salted_hash(canonical, self.salt) if canonical else None

        chip = item.get("chip")
        chip_value = canonical_chip(str(chip)) if chip else None
        if not chip_value and found.chips:
            chip_value = canonical_chip(found.chips[0])
        item["chip_hash"] = ids.salted_hash(chip_value, self.salt) if chip_value else None

        for key in PRIVATE_FIELDS:
            if key in item:
                del item[key]
        return item

    def _contact_in(self, value: Any) -> Redaction | None:
        """The redaction of an identifier or link when it holds a phone, e-mail, handle or profile; ``None`` when it
        holds none (a long numeric id or an address-like path is left alone: it is what identifies the card)."""
        if not value:
            return None
        result = redact(str(value), self.regions)
        return result if result.phones or result.emails or result.handles else None

    def _redact(self, value: str, key: str, found: Redaction) -> str:
        """``value`` redacted; what it held is added to ``found``, the field counted when it changed."""
        result = redact(value, self.regions)
        if result.changed:
            self.stats.inc_value(f"homeward/redacted/{key}")
        found.phones += result.phones
        found.emails += result.emails
        found.handles += result.handles
        found.chips += result.chips
        return result.text
