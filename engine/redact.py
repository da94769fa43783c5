"""Privacy: redact phones, emails, street-level addresses and chip/tattoo numbers from free text.

Stored text (descriptions, location text) never carries a way to reach or identify a person: the crawler keeps
contacts and microchip/tattoo numbers only as salted hashes (:func:`engine.ids.salted_hash`, salt from
``settings.salt``), so two posts by the same phone number or about the same chip still join, while the raw value is
never written anywhere.

What counts as what (English and Russian posts):

* **email** — ``name@host.tld`` (also ``name [at] host.tld``). Replaced by ``[email]``.
* **phone** — 10 to 14 digits with the usual separators (``+7 (999) 123-45-67``, ``8-999-123-45-67``,
  ``(206) 555-0123``, ``206.555.0123``), a US local ``555-0123``, or a masked number as sites publish them
  (``+7 (9**) ***-**-**``). Dates (``15.01.2024``), years, prices and short numbers are left alone. ``[phone]``.
* **chip** — a number after a chip/tattoo keyword (``chip``, ``microchip``, ``tattoo``, ``чип``, ``микрочип``,
  ``клеймо``, ``тату``), or any bare 15-digit ISO 11784 microchip number. ``[chip]``.
* **address** — street level only: a house number with a street type (``1234 N Elm Street``, ``55 Pine Ave``) or
  a Russian street with its house number (``ул. Ленина, д. 5, кв. 12``, ``пр-т Мира 17к2``). A street name
  without a house number ("near Lenina street") and a district or city stay: they are what matching needs.
  ``[address]``.

Canonical forms for hashing (:func:`canonical_phone`, :func:`canonical_chip`) make ``8 (999) 123-45-67`` and
``+7 999 1234567`` hash alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_EMAIL = re.compile(
    r"(?<![\w.+-])[\w.+-]+\s*(?:@|\[at\]|\(at\))\s*[\w-]+(?:\s*(?:\.|\[dot\]|\(dot\))\s*[\w-]+)+", re.IGNORECASE
)
# A phone: an optional +, then digits (or * masks) with separators; validated by digit count afterwards.
_PHONE = re.compile(r"(?<![\w*(])(\+?\s?\(?[\d*][\d*\s().\-–]{5,22}[\d*])(?![\w*])")
_US_LOCAL = re.compile(r"(?<![\d-])\d{3}-\d{4}(?![\d-])")
_DATE_LIKE = re.compile(r"^\d{1,4}[./-]\d{1,2}[./-]\d{1,4}$")
_CHIP_KEYWORD = re.compile(
    r"(?:micro-?chip|chip|tattoo|tatoo|микрочип|чип|клеймо|татуировк\w*|тату)\w*"
    r"(?:\s*(?:№|#|no\.?|number|номер|:|-))*\s*([A-Za-z0-9][A-Za-z0-9\s-]{4,22}[A-Za-z0-9])",
    re.IGNORECASE,
)
_BARE_CHIP = re.compile(r"(?<!\d)\d{15}(?!\d)")
_STREET_TYPES_EN = (
    r"street|st|avenue|ave|road|rd|boulevard|blvd|drive|dr|lane|ln|way|court|ct|place|pl|terrace|ter|"
    r"parkway|pkwy|highway|hwy|circle|cir|trail|trl|square|sq"
)
# House number, optional direction, 1-4 capitalised name words, a street type ("2024 near the park" is no address).
_ADDRESS_EN = re.compile(
    rf"\b\d{{1,6}}[A-Za-z]?\s+(?:[NSEW]\.?\s+|North\s+|South\s+|East\s+|West\s+)?(?:[A-Z0-9][\w'.-]*\s+){{1,4}}"
    rf"(?i:{_STREET_TYPES_EN})\b\.?(?:\s*(?i:#|apt\.?|unit|suite)\s*\w+)?"
)
_STREET_RU = (
    r"(?:ул\.|улица|ул\b|пр-т|пр-кт|просп\.|проспект|пр\.|пер\.|переулок|бульвар|б-р|бул\.|шоссе|ш\.|наб\.|"
    r"набережная|пл\.|площадь|проезд|мкр\.?|микрорайон|тупик|аллея)"
)
_ADDRESS_RU = re.compile(
    rf"{_STREET_RU}\s*[\w.\- ]{{1,40}}?,?\s*(?:д\.|дом)?\s*\d+(?:\s*[а-яa-z](?![\w]))?(?:\s*/\s*\d+)?"
    r"(?:\s*(?:к\.|корп\.|корпус|к|стр\.|строение)\s*\d+)?(?:\s*,?\s*(?:кв\.?|квартира|оф\.?)\s*\d+)?",
    re.IGNORECASE,
)
# "Ленина 5" / "Lenina, 5" after a street keyword is caught above; "д. 5, кв. 12" on its own is also street level.
_HOUSE_RU = re.compile(r"(?<!\w)(?:д\.|дом)\s*\d+[а-я]?(?:\s*,?\s*(?:кв\.|квартира)\s*\d+)?", re.IGNORECASE)


@dataclass
class Redaction:
    """Redacted text and what was removed from it (raw values: hash them, never store them)."""

    text: str
    phones: list[str] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)
    chips: list[str] = field(default_factory=list)
    addresses: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.phones or self.emails or self.chips or self.addresses)


def _digits(s: str) -> str:
    return "".join(ch for ch in s if ch.isdigit())


def canonical_phone(raw: str) -> str:
    """Digits only, Russian trunk prefix ``8`` as country code ``7``: equal numbers give equal strings."""
    digits = _digits(raw)
    if len(digits) == 11 and digits[0] == "8":
        digits = "7" + digits[1:]
    if len(digits) == 10 and digits[0] == "9":  # Russian mobile without the country code
        digits = "7" + digits
    return digits


def canonical_chip(raw: str) -> str:
    return re.sub(r"[^0-9a-z]", "", raw.lower())


def canonical_contact(raw: str) -> str | None:
    """The first email (lower-cased) or phone in ``raw``, canonical; ``None`` when it holds neither."""
    email = _EMAIL.search(raw)
    if email:
        value = re.sub(r"\s*(?:\[at\]|\(at\))\s*", "@", email.group(0), flags=re.IGNORECASE)
        value = re.sub(r"\s*(?:\[dot\]|\(dot\))\s*", ".", value, flags=re.IGNORECASE)
        return re.sub(r"\s+", "", value).lower()
    for m in _PHONE.finditer(raw):
        if _is_phone(m.group(1)):
            return canonical_phone(m.group(1)) or None
    m = _US_LOCAL.search(raw)
    if m:
        return _digits(m.group(0))
    digits = _digits(raw)
    return digits if len(digits) >= 5 else (raw.strip().lower() or None)


def _is_phone(candidate: str) -> bool:
    core = candidate.strip()
    if _DATE_LIKE.match(core):
        return False
    digits = sum(ch.isdigit() for ch in core)
    masks = core.count("*")
    total = digits + masks
    if masks and digits >= 1 and 10 <= total <= 14:
        return True
    if not 10 <= digits <= 14 or masks:
        return False
    # 10+ digits in one run with no separators and no '+': chip or id, not a phone — unless the usual lengths
    return not (re.fullmatch(r"\d+", core) and len(core) not in (10, 11))


def redact(text: str | None) -> Redaction:
    """Remove chips, emails, phones and street-level addresses from ``text``; report what was removed."""
    if not text:
        return Redaction(text or "")
    out = Redaction(text)
    s = text

    def chip_sub(m: re.Match[str]) -> str:
        number = m.group(1)
        if sum(ch.isdigit() for ch in number) < 3:
            return m.group(0)
        out.chips.append(number.strip())
        return m.group(0)[: m.start(1) - m.start(0)] + "[chip]"

    s = _CHIP_KEYWORD.sub(chip_sub, s)

    def bare_chip(m: re.Match[str]) -> str:
        out.chips.append(m.group(0))
        return "[chip]"

    s = _BARE_CHIP.sub(bare_chip, s)

    def email_sub(m: re.Match[str]) -> str:
        out.emails.append(m.group(0))
        return "[email]"

    s = _EMAIL.sub(email_sub, s)

    def phone_sub(m: re.Match[str]) -> str:
        if not _is_phone(m.group(1)):
            return m.group(0)
        out.phones.append(m.group(1).strip())
        return m.group(0).replace(m.group(1), "[phone]")

    s = _PHONE.sub(phone_sub, s)

    def local_sub(m: re.Match[str]) -> str:
        out.phones.append(m.group(0))
        return "[phone]"

    s = _US_LOCAL.sub(local_sub, s)

    def addr_sub(m: re.Match[str]) -> str:
        out.addresses += 1
        return "[address]"

    s = _ADDRESS_EN.sub(addr_sub, s)
    s = _ADDRESS_RU.sub(addr_sub, s)
    s = _HOUSE_RU.sub(addr_sub, s)
    out.text = s
    return out


def redact_text(text: str | None) -> str | None:
    """Just the redacted text (``None`` stays ``None``)."""
    return None if text is None else redact(text).text
