"""Site parsers: pure functions from a page's text to Homeward's raw listing dict.

Each site module exposes ``parse_card(text, url) -> dict`` (the raw listing contract in :mod:`crawlers.items`) and,
where the site has list pages, ``parse_catalog(text, url) -> (card_urls, next_page_urls)`` with absolute URLs. They
never touch the network, so they are tested against the saved pages in ``../shared/data/fixtures`` and reused by
the spiders in :mod:`crawlers.spiders`.

A page a parser cannot read — empty, garbage, truncated before the card, a different page type — raises
:class:`ParseError` with the reason (the spider records it as ``parse_error:ParseError``). A page that parses but
lacks something expected returns the listing with ``parse_warnings`` saying what was missing; a parser never returns
an "ok" listing with nothing in it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urljoin, urlsplit

from parsel import Selector

__all__ = [
    "ParseError",
    "absolute_url",
    "clean_text",
    "color_phrase",
    "fix_mojibake",
    "html_selector",
    "iso_date",
    "iso_datetime",
    "node_text",
    "tile_fingerprint",
    "unique",
]


class ParseError(ValueError):
    """The page cannot be read as what the parser expects (the message says why)."""


# UTF-8 bytes decoded as cp1252/latin-1 ("Ð¡Ð¾Ð±Ð°ÐºÐ°" for "Собака"): a lead byte C2–DF then continuation bytes.
_CP1252_CONT = (
    "\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc\u2013\u2014"
    "\u2018-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122"
)
_MOJIBAKE_RE = re.compile(rf"(?:[\u00c2-\u00df][{_CP1252_CONT}])+")


def fix_mojibake(text: str) -> str:
    """Repair runs of UTF-8 that were decoded as cp1252 (some saved pet911 pages); other text is left alone."""
    if "Ð" not in text and "Ñ" not in text:
        return text

    def fix(m: re.Match[str]) -> str:
        s = m.group(0)
        for enc in ("cp1252", "latin-1"):
            try:
                return s.encode(enc).decode("utf-8")
            except (UnicodeEncodeError, UnicodeDecodeError):
                continue
        return s

    return _MOJIBAKE_RE.sub(fix, text)


def html_selector(text: str | bytes, what: str = "page") -> Selector:
    """A parsel selector over ``text``, refusing input that is not HTML at all."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if text is None or not str(text).strip():
        raise ParseError(f"empty {what}")
    text = str(text).lstrip("\ufeff")
    if "<" not in text or not re.search(r"<\s*[a-zA-Z!]", text):
        raise ParseError(f"{what} has no HTML markup (tag-stripped or not HTML)")
    return Selector(text=text)


def clean_text(value: Any) -> str | None:
    """Collapse runs of spaces inside lines, trim, drop empty lines at the ends; ``None`` when nothing is left."""
    if value is None:
        return None
    text = str(value).replace("\u00a0", " ").replace("\r\n", "\n").replace("\r", "\n")
    lines = [re.sub(r"[ \t\f\v]+", " ", line).strip() for line in text.split("\n")]
    out = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return out or None


def node_text(nodes: Selector | Iterable[Selector] | None, sep: str = " ") -> str | None:
    """All text under ``nodes`` (``<br>`` and block ends become line breaks when ``sep`` is a newline)."""
    if nodes is None:
        return None
    parts: list[str] = []
    for node in [nodes] if isinstance(nodes, Selector) else nodes:
        parts.extend(node.xpath(".//text()[not(ancestor::script) and not(ancestor::style)]").getall())
    joined = sep.join(p.strip() for p in parts if p.strip()) if sep != "\n" else "\n".join(p.strip() for p in parts)
    return clean_text(joined)


_VOLATILE_CLASSES = ("hits", "pet-icons", "views", "catalog-item__status", "counter")
_VOLATILE_TEXT_RE = re.compile(
    r"\(?(?:\b\d+\s+)?(?:минут\w*|час\w*|дн\w*|день|недел\w*|месяц\w*)\s+назад\)?"
    r"|\b(?:сегодня|вчера|позавчера)(?:\s+в\s+\d{1,2}:\d{2})?|\b\d+(?:[.,]\d+)?\s*км\b",
    re.I,
)


def tile_fingerprint(tile: Selector) -> str:
    """What a catalog tile shows of a card, minus what changes by itself (view counters, "2 дня назад",
    distances from the viewer): the text an incremental crawl compares to decide whether to re-fetch the card."""
    cond = " or ".join(f"contains(@class,'{c}')" for c in _VOLATILE_CLASSES)
    texts = tile.xpath(f".//text()[not(ancestor::script) and not(ancestor::*[{cond}])]").getall()
    shown = _VOLATILE_TEXT_RE.sub(" ", " ".join(texts))
    images = [
        i for i in tile.css("img::attr(src), img::attr(data-src)").getall() if not re.search(r"/icons/|progress", i)
    ]
    return " ".join(shown.split() + images)


def absolute_url(base: str, href: str | None) -> str | None:
    """``href`` resolved against ``base``; ``None`` for empty, ``javascript:``/``data:`` and other non-http links."""
    if not href or not href.strip():
        return None
    url = urljoin(base or "", href.strip())
    return url if urlsplit(url).scheme.lower() in ("http", "https") else None


def unique(items: Iterable[str | None]) -> list[str]:
    out: list[str] = []
    for item in items:
        if item and item not in out:
            out.append(item)
    return out


def iso_date(text: Any) -> str | None:
    """A site date (``"пт, 22.04.2022"``, ``"14 января 2024"``, ISO…) as ``YYYY-MM-DD``; ``None`` if unreadable or
    relative (relative words are left to :func:`engine.normalize.normalize_listing`, which knows "now")."""
    from engine.normalize import RELATIVE_DAYS, parse_when

    if text is None or not str(text).strip():
        return None
    folded = str(text).lower()
    if any(w in folded for w in RELATIVE_DAYS) or "назад" in folded or " ago" in folded:
        return None
    dt, _ = parse_when(text)
    return dt.date().isoformat() if dt is not None else None


def iso_datetime(text: Any) -> str | None:
    """Like :func:`iso_date` but an ISO datetime string (midnight when the site gives only a day). A text without
    an offset gives one without an offset too: the normaliser reads it in the source's time zone."""
    from engine.normalize import RELATIVE_DAYS, has_zone, parse_when

    if text is None or not str(text).strip():
        return None
    folded = str(text).lower()
    if any(w in folded for w in RELATIVE_DAYS) or "назад" in folded or " ago" in folded:
        return None
    dt, _ = parse_when(text)
    if dt is None:
        return None
    return dt.isoformat() if has_zone(text) else dt.replace(tzinfo=None).isoformat()


_COLOR_AFTER_RE = re.compile(
    r"(?:окрас\w*|расцветк\w*|масть|цвет(?:а|ом)?|colou?r(?:ing)?)\s*[:\-–—]?\s*([^.;:!?\n()]{2,60})",
    re.IGNORECASE,
)
_COLOR_BEFORE_RE = re.compile(r"([\w-]+)\s+(?:окрас[аеом]*|расцветки|масти|colou?r(?:ed)?)\b", re.IGNORECASE)


def color_phrase(text: str | None) -> str | None:
    """The colour words in free text, for sites with no colour field.

    "Окрас - рыжий." → "рыжий"; "той-пудель рыжего окраса" → "рыжего"; ``None`` when no such phrase names a colour.
    """
    from engine.normalize import normalize_colors

    if not text:
        return None
    candidates = [m.group(1) for m in _COLOR_AFTER_RE.finditer(text)]
    candidates += [m.group(1) for m in _COLOR_BEFORE_RE.finditer(text)]
    for cand in candidates:
        cand = re.split(r",|\s+и\s+|\s+с\s+|\s+with\s+|\s+в\s+", cand.strip(), maxsplit=1)[0].strip(" -–—,")
        if cand and normalize_colors(cand, []):
            return cand
    return None
