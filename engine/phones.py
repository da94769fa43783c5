"""Phone numbers in free text: where they are and their one canonical form, with Google's ``phonenumbers``.

A regex alone cannot tell ``8 (999) 123-45-67`` from ``12.05.2025 18`` or a price range, and it cannot say that
``(206) 555-0123`` and ``+1 206 555 0123`` are one number. So the text is cut into *runs* of digits joined by phone
separators (spaces, ``()./-``; dates, times and coordinates masked first); every window of consecutive digit groups
in a run (longest first, so ``8 999 123 45 67 с 18:30`` yields the whole number and not ``45 67``) is parsed by
``phonenumbers`` in each likely region, the source's own first. A window is a phone when:

* it is a **valid** number in one of the regions (10+ digits, or 8+ after a ``+`` or ``00``: 9-digit national
  numbers are too easily a price or a count) written as dialled there — with the trunk prefix (UK/UA ``0``,
  BY ``8``) except in the US and Russia, where ``206 555 0123`` and ``916 123-45-67`` are usual. Canonical form
  E.164 (``+12065550123``), so every spelling hashes alike;
* or it is only **possible** (right length, e.g. the fictional ``(555) 123-4567`` or UK drama ``07700 900123``) and
  written the way people write phones: a ``+`` prefix, US ``(206) 555-0123``, Russian ``8 (999) 123-45-67``, or
  a trunk ``0`` (UK/UA). E.164 too;
* or it is a local number without an area code written with dashes, US ``555-0123`` or Russian ``123-45-67``
  (canonical: its digits — without an area code there is nothing to make it international).

A bare run of digits (``89161234567``, but also an order number) counts only when valid in the first region.
Thousands-grouped amounts (``150 000 - 200 000``) are never phones, whatever their digit count. The caller passes
the text with letters O between digits already read as zeros (``8 9OO 123 45 67``).

The region order is a hint, not a filter: a number valid only in a later region is still found, but when a
national number is valid in two (``916 555 1234`` is a Moscow mobile and a Sacramento line) the first wins.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import phonenumbers

DEFAULT_REGIONS: tuple[str, ...] = ("RU", "US", "UA", "BY", "GB")

_RUN = re.compile(r"(?<![A-Za-z0-9_*+#№])(?:\+\s?)?\(?[0-9](?:[\s()./\-]{0,3}[0-9])*\)?(?![A-Za-z0-9_*])")
_GROUP = re.compile(r"\+?\s?\(?[0-9]+\)?")
# Dates, ISO dates, clock times and coordinates are blanked before runs are cut: "12.05.2025 18:30" and
# "55.755826 37.617300" hold ten digits and more.
_NOT_PHONE = re.compile(
    r"(?<![0-9])(?:[0-9]{1,2}[./][0-9]{1,2}[./](?:[0-9]{4}|[0-9]{2})|[0-9]{1,2}-[0-9]{1,2}-[0-9]{4}"
    r"|[0-9]{4}[-./][0-9]{1,2}[-./][0-9]{1,2}|[0-9]{1,2}:[0-9]{2}(?::[0-9]{2})?)(?![0-9])"
    r"|(?<![0-9.])[0-9]{1,3}\.[0-9]{5,}(?![0-9.])"
)
# Amounts and amount ranges in thousands groups: "150 000 - 200 000", "30 000 40 000".
_AMOUNT = re.compile(r"[0-9]{1,3}(?:[ .][0-9]{3})+(?:\s*[-,;/]?\s*[0-9]{1,3}(?:[ .][0-9]{3})+)*")
# Countries where a national number is commonly written without its trunk prefix (US "206 555 0123", RU
# "916 123-45-67"). Elsewhere (GB, UA, BY) it is not: "1234567890" is a valid UK number without its 0, but nobody in
# the UK writes it so, and taking it would redact every ten-digit id.
_TRUNKLESS_COUNTRY_CODES = frozenset({1, 7})
_PHONE_SHAPED = re.compile(
    r"\+.*"
    r"|(?:1[\s.\-]?)?\(?[0-9]{3}\)?[\s.\-]?[0-9]{3}[\s.\-][0-9]{4}"
    r"|[78][\s\-]?\(?[0-9]{3,5}\)?[\s\-]?[0-9]{1,3}[\s\-]?[0-9]{2}[\s\-]?[0-9]{2}"
    r"|0[0-9]{2,4}\)?[\s\-]?[0-9]{3}[\s\-]?[0-9]{3,4}"
)
_LOCAL = re.compile(r"[0-9]{3}-[0-9]{4}|[0-9]{3}-[0-9]{2}-[0-9]{2}")
_MAX_GROUPS = 15  # "8 9 1 6 1 2 3 4 5 6 7": one group per digit


@dataclass(frozen=True)
class Phone:
    """A phone found in text: its span and its canonical form (E.164, or the digits of a local number)."""

    start: int
    end: int
    canonical: str


def regions(hint: str | None = None) -> tuple[str, ...]:
    """The regions to try, ``hint`` (an ISO 3166 code ``phonenumbers`` knows, any case) first.

    Raises ``ValueError`` for a code ``phonenumbers`` has no metadata for, so a typo in a source's config fails
    loudly instead of quietly finding fewer phones.
    """
    if not hint:
        return DEFAULT_REGIONS
    code = hint.strip().upper()
    if code not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError(f"unknown phone region {hint!r} (an ISO 3166 code such as RU, US, GB)")
    return (code, *(r for r in DEFAULT_REGIONS if r != code))


def _dialled_in(digits: str, region: str) -> bool:
    """True when a national number of ``digits`` is written as dialled in ``region``: its trunk prefix, then a
    length the region's numbers have — or, where numbers are written without a trunk prefix, just such a length
    (country code first allowed). Cheap, so the costly ``phonenumbers.parse`` runs only on plausible windows."""
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    if metadata is None:
        return False
    lengths = metadata.general_desc.possible_length
    prefix = metadata.national_prefix or ""
    if prefix and digits.startswith(prefix) and len(digits) - len(prefix) in lengths:
        return True
    if metadata.country_code not in _TRUNKLESS_COUNTRY_CODES:
        return False
    code = str(metadata.country_code)
    return len(digits) in lengths or (digits.startswith(code) and len(digits) - len(code) in lengths)


@functools.lru_cache(maxsize=4096)
def canonical(window: str, tries: tuple[str, ...]) -> str | None:
    """The canonical form of ``window`` when it is a phone by the module's rules, else ``None``."""
    # A line break or tab inside a number (a post wrapped mid-number) is a space to the reader; phonenumbers
    # refuses any but a plain space.
    window = " ".join(window.split())
    digits = "".join(ch for ch in window if ch.isdigit())
    if _LOCAL.fullmatch(window):
        return digits
    # "0044 20 7946 0018": the international call prefix most countries dial; only a valid number after it counts
    idd = window.startswith("00")
    if idd:
        window = "+" + window[2:].lstrip()
    international = window.lstrip("(").startswith("+")
    if len(digits) > 15 or len(digits) < (8 if international else 10):
        return None
    if not international and _AMOUNT.fullmatch(window):
        return None
    # A bare run of digits is as often an id as a phone: only the source's own region may read it, and only a
    # valid number counts. After a "+" the region is irrelevant: one parse.
    bare = window.isdigit()
    if international:
        regions: Sequence[str] = tries[:1]
    else:
        regions = [r for r in (tries[:1] if bare else tries) if _dialled_in(digits, r)]
    possible: phonenumbers.PhoneNumber | None = None
    for region in regions:
        try:
            number = phonenumbers.parse(window, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number):
            return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        if possible is None and phonenumbers.is_possible_number(number):
            possible = number
    if possible is not None and not (bare or idd) and _PHONE_SHAPED.fullmatch(window):
        return phonenumbers.format_number(possible, phonenumbers.PhoneNumberFormat.E164)
    return None


def find(text: str, tries: Sequence[str] = DEFAULT_REGIONS) -> Iterator[Phone]:
    """Every phone in ``text`` (left to right, non-overlapping)."""
    masked = _NOT_PHONE.sub(lambda m: "#" * len(m.group()), text)
    for run in _RUN.finditer(masked):
        groups = list(_GROUP.finditer(run.group()))
        i = 0
        while i < len(groups):
            for j in range(min(i + _MAX_GROUPS, len(groups)) - 1, i - 1, -1):
                start, end = run.start() + groups[i].start(), run.start() + groups[j].end()
                window = text[start:end].strip()
                value = canonical(window, tuple(tries))
                if value is not None:
                    lead = len(text[start:end]) - len(text[start:end].lstrip())
                    yield Phone(start + lead, start + lead + len(window), value)
                    i = j
                    break
            i += 1
