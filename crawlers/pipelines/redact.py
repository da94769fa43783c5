"""Stage 3, redact: no stored text carries a phone, an email, a street-level address or a chip number.

* ``description``, ``name`` and ``location_text`` go through :func:`engine.redact.redact` (``[phone]``,
  ``[email]``, ``[address]``, ``[chip]`` placeholders);
* ``contact`` (or, when the card has none, the first phone/email found in the text) becomes ``contact_hash`` =
  :func:`engine.ids.salted_hash` of its canonical form with ``settings.salt``; ``chip`` (or a chip/tattoo number
  found in the text) becomes ``chip_hash`` the same way;
* the raw ``contact``, ``chip`` and ``author_name`` are removed from the item, so nothing downstream (the writer,
  a ``-O out.jsonl`` feed) ever sees them.
"""

from __future__ import annotations

from typing import Any

from crawlers.items import ListingItem
from crawlers.pipelines import Stage
from engine import ids
from engine.redact import canonical_chip, canonical_contact, redact

TEXT_FIELDS = ("description", "name", "location_text")
PRIVATE_FIELDS = ("contact", "chip", "author_name")


class RedactPipeline(Stage):
    def process_item(self, item: Any) -> Any:
        if not isinstance(item, ListingItem):
            return item
        phones: list[str] = []
        emails: list[str] = []
        chips: list[str] = []
        for key in TEXT_FIELDS:
            value = item.get(key)
            if not value:
                continue
            result = redact(str(value))
            if result.changed:
                self.stats.inc_value(f"homeward/redacted/{key}")
            item[key] = result.text
            phones += result.phones
            emails += result.emails
            chips += result.chips

        contact = item.get("contact")
        if isinstance(contact, (list, tuple)):
            contact = next((str(c) for c in contact if c), None)
        canonical = canonical_contact(str(contact)) if contact else None
        if canonical is None:
            for candidate in emails + phones:
                canonical = canonical_contact(candidate)
                if canonical:
                    break
        item["contact_hash"] = ids.salted_hash(canonical, self.hw.salt) if canonical else None

        chip = item.get("chip")
        chip_value = canonical_chip(str(chip)) if chip else None
        if not chip_value and chips:
            chip_value = canonical_chip(chips[0])
        item["chip_hash"] = ids.salted_hash(chip_value, self.hw.salt) if chip_value else None

        for key in PRIVATE_FIELDS:
            if key in item:
                del item[key]
        return item
