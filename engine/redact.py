"""Privacy: redact contacts, street-level addresses and chip/tattoo numbers from free text.

Stored text (every free-text field of a listing) never carries a way to reach or identify a person: the crawler
keeps contacts and microchip/tattoo numbers only as salted hashes (:func:`engine.ids.salted_hash`, salt from
``settings.salt``), so two posts by the same phone number or about the same chip still join, while the raw value is
never written anywhere.

Matching runs on a *view* of the text: HTML entities decoded (``ivan&#64;mail.ru``, ``&#43;7 916...``: text
taken from HTML or JSON-LD may still carry them), NFKC (full-width ``＠`` and digits become ASCII), every dash
(en/em dash, non-breaking hyphen U+2011, minus) a ``-``, zero-width characters, soft hyphens and bidi controls gone;
for phones only, a letter O or I/l next to digits reads as 0 or 1 (``8 9OO 123-45-67``, ``8 (9I6)...``) and a middle
dot or bullet as a dot (``415·902·3386``). Each match is mapped back to its span in the original (a whole entity
at its edges), so the text around a contact is stored exactly as written.

What counts as what (English and Russian posts):

* **email** — ``name@host.tld``, spaced or obfuscated: ``name [at] host [dot] ru``, ``name(собака)mail.ru``,
  ``name at mail dot ru``, ``name dot surname at mail dot ru``, ``name собака mail точка ru``, ``name@mail,ru``.
  A spelled-out ``at``/``dot`` needs a common top-level domain (``ru``, ``com``...), so a sentence such as "seen
  at Green Lake" stays. ``[email]``.
* **profile** — a link to a social or messenger profile (``t.me/…``, ``vk.com/id…``, ``ok.ru/profile/…``,
  ``instagram.com/…``, ``facebook.com/…``, ``wa.me/…``, viber, tiktok, youtube, ``tg://`` links...). Other links
  (the listing itself, a shelter's site) stay. ``[profile]``.
* **handle** — ``@user``, or a handle named after a messenger (``telegram: ivan_p``, ``skype ivan.petrov``,
  ``вайбер: ivan``): after a colon any word, after a space only a handle-shaped one (``_``, ``.`` or a digit), so
  "write on telegram please" stays. ``[handle]``.
* **phone** — found and canonicalised by :mod:`engine.phones` (``phonenumbers``; regions: the source's hint, then
  RU, US, UA, BY, GB), plus numbers masked as sites publish them (``+7 (9**) ***-**-**``). Dates, times, years,
  prices, weights, ranges and postcodes are left alone. ``[phone]``.
* **chip** — a number after a chip/tattoo keyword (``chip``, ``microchip``, ``tattoo``, ``чип``, ``микрочип``,
  ``клеймо``, ``тату``), or any bare 15-digit ISO 11784 microchip number. ``[chip]``.
* **address** — street level only: a house number with a street type (``1234 N Elm Street``, ``55 Pine Ave``) or
  a Russian street with its house number (``ул. Ленина, д. 5, кв. 12``, ``пр-т Мира 17к2``). A street name
  without a house number ("near Lenina street") and a district or city stay: they are what matching needs.
  ``[address]``.

:func:`canonical_contact` gives one form per contact for hashing: E.164 for phones (``8 (999) 123-45-67`` and
``+7 999 1234567`` are both ``+79991234567``; ``(206) 555-0123`` and ``+1 206 555 0123`` both ``+12065550123``),
lower case for e-mails (obfuscations undone) and handles, ``@name`` for a Telegram link.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from engine import phones

_DASHES = dict.fromkeys(map(ord, "\u2010\u2011\u2012\u2013\u2014\u2015\u2043\u2212\ufe58\ufe63\uff0d"), "-")
# Zero-width characters, soft hyphens and bidi controls: invisible, and able to split a number out of a pattern.
_INVISIBLE = frozenset(
    "\u00ad\u200b\u200c\u200d\u200e\u200f\u2060\ufeff\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
# Letters O (Latin or Cyrillic) and I/l that are no part of a word, next to a digit (across one separator at most):
# "9OO-OOO" is "900-000" and "9I6" is "916" (applied until nothing changes); the "о" of "по 8 916..." stays.
_DIGIT_LOOKALIKE = re.compile(
    r"(?<![^\W\d_])(?:(?<=[0-9])|(?<=[0-9][\s.\-]))[OoОоIl]+(?![^\W\d_])"
    r"|(?<![^\W\d_])[OoОоIl]+(?![^\W\d_])(?=[\s.\-]?[0-9])"
)
_AS_DIGIT = str.maketrans("OoОоIl", "000011")
# Middle dots and bullets some posts put between digit groups ("415·902·3386"): a dot, for phones only.
_DOTS = dict.fromkeys(map(ord, "\u00b7\u2022\u2027\u2219\u22c5\u30fb\uff65"), ".")
# One character of the text, or one HTML entity ("&#64;", "&commat;"): text copied from HTML or JSON-LD still
# carries them, and "ivan&#64;mail.ru" is an e-mail all the same.
_CHAR = re.compile(r"(?P<entity>&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});)|.", re.DOTALL)

_AT_SIGN = r"\s*@\s*|\s*[\[({<]\s*(?:at|собака|собачка|эт)\s*[\])}>]\s*"
_AT_WORD = r"\s+(?:at|собака|собачка)\s+"
_DOT_SPELLED = r"\s*[\[({<]\s*(?:dot|точка|тчк)\s*[\])}>]\s*|\s+(?:dot|точка|тчк)\s+"
_AT = f"{_AT_SIGN}|{_AT_WORD}"
_DOT = rf"\s?\.\s?|{_DOT_SPELLED}"
# Top-level domains an obfuscated address may end in: with a spelled-out "at", any word after a dot is too often prose.
_COMMON_TLDS = r"ru|com|net|org|ua|by|kz|uk|de|fr|it|es|pl|io|me|su|info|biz|edu|gov|us|ca|au|eu|ch|nl|рф|укр|бел"
_LABEL = r"\w[\w-]*"
_LOCAL = r"\w[\w.+%-]*"
_LOCAL_SPELLED = rf"{_LOCAL}(?:(?:{_DOT_SPELLED}){_LOCAL})*"  # "ivan dot petrov at ..."
_EMAIL = re.compile(
    r"(?<![\w.+%-])(?:"
    rf"{_LOCAL}@{_LABEL}(?:\.{_LABEL})*\.[^\W\d_]{{2,24}}"  # plain: any top-level domain
    # spaced, or an [at]; a comma for a dot ("ivan@gmail,com") too
    rf"|{_LOCAL_SPELLED}(?:{_AT_SIGN}){_LABEL}(?:(?:{_DOT}|,\s?){_LABEL})*(?:{_DOT}|,\s?)(?:{_COMMON_TLDS})"
    # a bare "at" word: no spaced dots, or "found at home. It was" would be an address
    rf"|{_LOCAL_SPELLED}(?:{_AT_WORD}){_LABEL}(?:(?:\.|{_DOT_SPELLED}){_LABEL})*(?:\.|{_DOT_SPELLED})(?:{_COMMON_TLDS}))"
    r"(?![\w-])",
    re.IGNORECASE,
)
_SOCIAL_HOSTS = (
    r"t\.me|telegram\.(?:me|dog|org)|vk\.(?:com|ru|me|cc)|vkontakte\.ru|ok\.ru|odnoklassniki\.ru|"
    r"instagram\.com|instagr\.am|facebook\.com|fb\.(?:com|me|watch)|messenger\.com|m\.me|wa\.me|whatsapp\.com|"
    r"viber\.(?:com|me)|vb\.me|tiktok\.com|youtube\.com|youtu\.be|twitter\.com|x\.com|threads\.net|"
    r"linkedin\.com|snapchat\.com|pinterest\.com|dzen\.ru|my\.mail\.ru|icq\.im|discord\.(?:gg|com)|max\.ru"
)
_PROFILE = re.compile(
    rf"(?<![\w.@/-])(?:https?://)?(?:[\w-]+\.)*(?:{_SOCIAL_HOSTS})(?![\w-])(?:/[^\s<>\"'«»]*)?"
    r"|(?<![\w.-])(?:tg|viber|whatsapp|skype|fb-messenger)://[^\s<>\"'«»]+"
    r"|(?<![\w.-])skype:[A-Za-z][\w.:-]+(?:\?\w+)?",
    re.IGNORECASE,
)
_HANDLE = re.compile(r"(?<![\w@./+-])@(?=[\w.]*[A-Za-z])[A-Za-z0-9_][A-Za-z0-9_.]{1,31}(?<!\.)")
# Words that are also names or plain words ("Max", "line", "signal") are left out: "Max: friendly" is a dog.
_MESSENGERS = (
    r"telegram|телеграмм?е?|телега|тг|tg|whats\s?app|ватсапп?е?|вотсапп?е?|вацапп?е?|viber|вайбере?|вибере?|skype|"
    r"скайпе?|insta(?:gram)?|ig|инст(?:а|аграмм?е?)|vk|вк|вконтакте|discord|дискорде?|snapchat|wechat|tiktok|тиктоке?|"
    r"facebook|фейсбуке?|fb|icq|аська"
)
_MENTION = re.compile(
    rf"(?<!\w)(?:{_MESSENGERS})(?:\s*[/,]\s*(?:{_MESSENGERS}))*(?!\w)(?P<sep>\s*[:\-]\s*|\s+)"
    r"(?P<handle>(?:live:)?[A-Za-z][\w.-]*\w(?:#\d{4})?)",  # Skype's "live:" ids, Discord's "#1234" tags
    re.IGNORECASE,
)
_HANDLE_SHAPED = re.compile(r"[_.0-9]")
_MASKED_PHONE = re.compile(r"(?<![\w*])\+?\s?\(?[\d*][\d*\s().\-]{5,22}[\d*](?![\w*])")
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

#: A finder: the normalised text in, ``(start, end)`` spans of what to redact out.
Finder = Callable[[str], Iterable[tuple[int, int]]]


@dataclass
class Redaction:
    """Redacted text and what was removed from it (raw values: hash them, never store them)."""

    text: str
    phones: list[str] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)
    handles: list[str] = field(default_factory=list)
    chips: list[str] = field(default_factory=list)
    addresses: int = 0

    @property
    def changed(self) -> bool:
        return bool(self.phones or self.emails or self.handles or self.chips or self.addresses)


@dataclass(frozen=True)
class _View:
    """The normalised text and, for each of its characters, the span of the original it came from (one character,
    or a whole HTML entity)."""

    text: str
    origin: list[tuple[int, int]] | None  # None: the text needed no normalising, indexes are the same

    def span(self, start: int, end: int) -> tuple[int, int]:
        if self.origin is None:
            return start, end
        return self.origin[start][0], self.origin[end - 1][1]


def _view(text: str) -> _View:
    if text.isascii() and "&" not in text:
        return _View(text, None)
    chars: list[str] = []
    origin: list[tuple[int, int]] = []
    for ch, span in _pieces(text):
        if ch in _INVISIBLE:
            continue
        norm = unicodedata.normalize("NFKC", ch).translate(_DASHES)
        chars.append(norm)
        origin.extend([span] * len(norm))
    return _View("".join(chars), origin)


def _pieces(text: str) -> Iterator[tuple[str, tuple[int, int]]]:
    """Each character of ``text`` (an HTML entity decoded) with its span; the cheap path when there is no entity."""
    if "&" not in text:
        return ((ch, (i, i + 1)) for i, ch in enumerate(text))
    return ((html.unescape(m.group()) if m.group("entity") else m.group(), m.span()) for m in _CHAR.finditer(text))


def phone_view(text: str) -> str:
    """``text`` as normalised for matching, with letters O and I/l next to digits read as 0 and 1 and middle dots as
    dots (phones only; the length stays, so spans still map)."""
    text = text.translate(_DOTS)
    prev = None
    while prev != text:
        prev, text = text, _DIGIT_LOOKALIKE.sub(lambda m: m.group().translate(_AS_DIGIT), text)
    return text


def _replace(text: str, finder: Finder, placeholder: str, found: list[str]) -> str:
    """``text`` with every span ``finder`` reports on its normalised view replaced by ``placeholder``; the original
    substrings are appended to ``found``."""
    view = _view(text)
    out: list[str] = []
    last = 0
    for start, end in finder(view.text):
        a, b = view.span(start, end)
        if a < last:
            continue
        found.append(text[a:b])
        out += [text[last:a], placeholder]
        last = b
    return "".join(out) + text[last:] if out else text


def _profiles(text: str) -> Iterable[tuple[int, int]]:
    for m in _PROFILE.finditer(text):
        yield m.start(), m.start() + len(m.group().rstrip(".,;:!?)]}"))


def _mentions(text: str) -> Iterable[tuple[int, int]]:
    for m in _MENTION.finditer(text):
        handle = m.group("handle")
        if ":" in m.group("sep") or "-" in m.group("sep") or _HANDLE_SHAPED.search(handle):
            yield m.span("handle")


def _masked_phones(text: str) -> Iterable[tuple[int, int]]:
    for m in _MASKED_PHONE.finditer(text):
        core = m.group().strip()
        digits, masks = sum(ch.isdigit() for ch in core), core.count("*")
        if masks and digits and 10 <= digits + masks <= 14:
            yield m.start() + len(m.group()) - len(m.group().lstrip()), m.end()


def _phone_finder(tries: Sequence[str]) -> Finder:
    return lambda text: ((p.start, p.end) for p in phones.find(phone_view(text), tries))


def _chips_after_keyword(text: str) -> Iterable[tuple[int, int]]:
    for m in _CHIP_KEYWORD.finditer(text):
        if sum(ch.isdigit() for ch in m.group(1)) >= 3:
            yield m.span(1)


def _pattern(regex: re.Pattern[str]) -> Finder:
    return lambda text: (m.span() for m in regex.finditer(text))


def redact(text: str | None, regions: Sequence[str] = phones.DEFAULT_REGIONS) -> Redaction:
    """Remove chips, contacts and street-level addresses from ``text``; report what was removed.

    ``regions``: where phone numbers without a ``+`` are read first (:func:`engine.phones.regions` builds it from
    a source's hint). Passes run in an order where the wider pattern goes first (an e-mail before the ``@host``
    inside it, a profile link before its ``@name``, a chip before the digits a phone finder would see in it).
    """
    if not text:
        return Redaction(text or "")
    out = Redaction(text)
    addresses: list[str] = []
    passes: list[tuple[Finder, str, list[str]]] = [
        (_chips_after_keyword, "[chip]", out.chips),
        (_pattern(_BARE_CHIP), "[chip]", out.chips),
        (_pattern(_EMAIL), "[email]", out.emails),
        (_profiles, "[profile]", out.handles),
        (_pattern(_HANDLE), "[handle]", out.handles),
        (_mentions, "[handle]", out.handles),
        (_masked_phones, "[phone]", out.phones),
        (_phone_finder(regions), "[phone]", out.phones),
        (_pattern(_ADDRESS_EN), "[address]", addresses),
        (_pattern(_ADDRESS_RU), "[address]", addresses),
        (_pattern(_HOUSE_RU), "[address]", addresses),
    ]
    s = text
    for finder, placeholder, found in passes:
        s = _replace(s, finder, placeholder, found)
    out.text = s
    out.addresses = len(addresses)
    return out


def redact_text(text: str | None, regions: Sequence[str] = phones.DEFAULT_REGIONS) -> str | None:
    """Just the redacted text (``None`` stays ``None``)."""
    return None if text is None else redact(text, regions).text


def canonical_chip(raw: str) -> str:
    return re.sub(r"[^0-9a-z]", "", raw.lower())


def _canonical_email(raw: str) -> str:
    at = re.sub(_AT, "@", raw, count=1, flags=re.IGNORECASE)
    return re.sub(rf"{_DOT}|,\s?", ".", at, flags=re.IGNORECASE).lower()


def _canonical_profile(raw: str) -> str:
    value = re.sub(r"^(?:https?://)?(?:www\.|m\.|mobile\.)?", "", raw.strip().lower()).split("?")[0].rstrip("/")
    telegram = re.fullmatch(r"(?:t\.me|telegram\.(?:me|dog))/@?([\w.]+)", value)
    return f"@{telegram.group(1)}" if telegram else value


def canonical_contact(raw: str, regions: Sequence[str] = phones.DEFAULT_REGIONS) -> str | None:
    """The first contact in ``raw``, canonical (see the module docstring); ``None`` when ``raw`` is blank.

    A value with no recognisable contact (a card's contact field holding a bare number or a name) is kept lower
    cased, or as its digits when it has five or more, so the same odd value still hashes alike.
    """
    view = _view(raw).text
    email = _EMAIL.search(view)
    if email:
        return _canonical_email(email.group())
    profile = next(iter(_profiles(view)), None)
    if profile:
        return _canonical_profile(view[profile[0] : profile[1]])
    # The value is known to be a contact: a bare number ("89161234567") may be read in any region, not just the first.
    for first in regions:
        tries = (first, *(r for r in regions if r != first))
        phone = next(phones.find(phone_view(view), tries), None)
        if phone:
            return phone.canonical
    handle = _HANDLE.search(view)
    if handle:
        return handle.group().lower()
    mention = next(iter(_mentions(view)), None)
    if mention:
        return "@" + view[mention[0] : mention[1]].lower()
    digits = "".join(ch for ch in view if ch.isdigit())
    return digits if len(digits) >= 5 else (raw.strip().lower() or None)
